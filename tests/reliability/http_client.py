"""Small HTTP/1.1 clients for the reliability tests (loopback only).

``request`` is a blocking one-shot request. ``fire_together`` opens every connection first,
sends each request but its last byte, waits on a barrier, then sends all last bytes at once:
the server sees the duplicates at the same moment, which is what a retry storm looks like.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HOST = "127.0.0.1"

#: Headers the HTTP server adds around the app's response; not part of what is stored.
SERVER_HEADERS = frozenset({"date", "server", "connection", "keep-alive", "transfer-encoding"})


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]  # names lower-cased, wire order kept
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name.lower()]

    @property
    def replayed(self) -> bool:
        return self.header("idempotent-replayed") == "true"

    def app_headers(self, replay_header: str = "idempotent-replayed") -> list[tuple[str, str]]:
        """The headers the app (or the replay) produced: no server framing, no replay marker."""
        return [(k, v) for k, v in self.headers if k not in SERVER_HEADERS and k != replay_header]

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    *,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    timeout: float = 10.0,
) -> Response:
    """One request on a fresh connection; raises ``OSError`` subclasses on network failure."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        for name, value in pairs:
            conn.putheader(name, value)
        if body or method in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, [(k.lower(), v) for k, v in resp.getheaders()], data)
    finally:
        conn.close()


def post_json(
    port: int, path: str, key: str | None, payload: Any, *, timeout: float = 10.0
) -> Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return request(
        port, "POST", path, headers=headers, body=json.dumps(payload).encode(), timeout=timeout
    )


def post_until_settled(
    port: int, path: str, key: str, payload: Any, *, timeout: float = 8.0
) -> tuple[Response, int, float]:
    """POST until the answer is no longer 409 "in progress"; bounded by ``timeout``.

    Returns the answer, how many 409s came first, and the seconds it took.
    """
    start = time.monotonic()
    conflicts = 0
    while True:
        response = post_json(port, path, key, payload, timeout=timeout)
        in_progress = response.status == 409 and b"in-progress" in response.body
        if not in_progress or time.monotonic() - start > timeout or conflicts >= 1000:
            return response, conflicts, time.monotonic() - start
        conflicts += 1
        time.sleep(0.05)


def raw_request(path: str, key: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nIdempotency-Key: {key}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


async def read_response(reader: asyncio.StreamReader) -> Response:
    """Parse one HTTP/1.1 response (Content-Length, chunked, or read-to-close)."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before the status line")
    status = int(status_line.split()[1])
    headers: list[tuple[str, str]] = []
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip().lower(), value.strip()))
    lookup = dict(headers)
    if "content-length" in lookup:
        body = await reader.readexactly(int(lookup["content-length"]))
    elif lookup.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                break
            parts.append(await reader.readexactly(size))
            await reader.readline()
        body = b"".join(parts)
    else:
        body = await reader.read()
    return Response(status, headers, body)


async def _one(port: int, raw: bytes, ready: asyncio.Queue[None], go: asyncio.Event) -> Response:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(raw[:-1])
        await writer.drain()
        ready.put_nowait(None)
        await go.wait()
        writer.write(raw[-1:])
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()


async def _bounded(
    port: int, raw: bytes, ready: asyncio.Queue[None], go: asyncio.Event, timeout: float
) -> Response | BaseException:
    try:
        return await asyncio.wait_for(_one(port, raw, ready, go), timeout)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
        ready.put_nowait(None)  # never leave the barrier waiting for a failed connection
        return exc


async def _fire(
    port: int, requests: Sequence[bytes], timeout: float
) -> list[Response | BaseException]:
    ready: asyncio.Queue[None] = asyncio.Queue()
    go = asyncio.Event()
    tasks = [asyncio.create_task(_bounded(port, raw, ready, go, timeout)) for raw in requests]

    async def all_ready() -> None:
        for _ in requests:
            await ready.get()

    try:
        await asyncio.wait_for(all_ready(), timeout)
    finally:
        go.set()  # a connection that never got ready is already counted as failed
    return list(await asyncio.gather(*tasks))


def fire_together(
    port: int, requests: Sequence[bytes], timeout: float = 30.0
) -> list[Response | BaseException]:
    """Send every request at the same moment (barrier on the last byte); bounded by timeout."""
    return asyncio.run(_fire(port, requests, timeout))
