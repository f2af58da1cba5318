"""Lean Redis connections for ``RedisPersistenceLayer(url=)``: pipelined asyncio, blocking sync.

Why not redis-py's asyncio client on the hot path: each of its commands costs tens of
microseconds of Python (connection checkout, locks, callbacks), and every request needs one or
two commands. Here all commands issued during one event-loop tick are packed into one write on
one connection, and replies are matched to callers in order (Redis answers a connection's
commands in the order they were sent). When idle, a lone command leaves at the end of the
current tick: no timer, no added latency.

It speaks RESP2 for the commands the layer uses (SET, GET, EVALSHA, EVAL, PING, and an ECHO
closing each pipelined batch, see ``PipelinedConnection.settling``) plus
AUTH and SELECT at connect; replies are parsed by hiredis when installed, else by a small
parser below. Errors use redis-py's exception classes so that the layer handles both clients
alike. Anything fancier (Cluster, Sentinel, Unix sockets, client-side caching) goes through
redis-py: pass ``client=``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import ssl
import threading
import time
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.exceptions import (
    AuthenticationError,
    NoScriptError,
    ResponseError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

try:
    import hiredis
except ImportError:  # pragma: no cover - exercised when hiredis is absent
    hiredis = None  # type: ignore[assignment]

from .._forksafe import renew_after_fork
from ._batch import Command, TickBatcher


def _pack_any(command: Command) -> bytes:
    """RESP2 array of bulk strings, for any command (str, int or bytes-like arguments)."""
    out = [b"*%d\r\n" % len(command)]
    for arg in command:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        out.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(out)


#: The layer's hot commands as one format each: one ``%`` instead of one per argument (a
#: third of the instructions of ``_pack_any``, which formats and joins each argument).
_SET_NX_PX_GET = (
    b"*7\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$2\r\nNX\r\n$2\r\nPX\r\n$%d\r\n%b\r\n"
    b"$3\r\nGET\r\n"
)
_GET = b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n"
#: EVALSHA sha 1 key owner value ms (complete, renew) and EVALSHA sha 1 key owner (release).
_EVALSHA_7 = b"*7\r\n$7\r\nEVALSHA\r\n$%d\r\n%b\r\n$1\r\n1\r\n" + b"$%d\r\n%b\r\n" * 4
_EVALSHA_5 = b"*5\r\n$7\r\nEVALSHA\r\n$%d\r\n%b\r\n$1\r\n1\r\n" + b"$%d\r\n%b\r\n" * 2


def pack(command: Command) -> bytes:
    """RESP2 array of bulk strings; the layer's own command shapes take a template.

    Each template is used only when every argument has exactly the type it formats (``str``
    keys and scripts, ``bytes`` records and owners, ``int`` times): anything else, a ``bool``
    or a ``bytearray`` included, goes through ``_pack_any``, so the bytes sent never differ.
    """
    size = len(command)
    name = command[0]
    if name == "SET":
        if size == 7 and command[3] == "NX" and command[4] == "PX" and command[6] == "GET":
            key, value, ms = command[1], command[2], command[5]
            if key.__class__ is str and value.__class__ is bytes and ms.__class__ is int:
                key = key.encode()
                ms = b"%d" % ms
                return _SET_NX_PX_GET % (len(key), key, len(value), value, len(ms), ms)
    elif name == "EVALSHA":
        if size >= 5 and command[2] == 1 and command[2].__class__ is int:
            sha, key, owner = command[1], command[3], command[4]
            if sha.__class__ is str and key.__class__ is str and owner.__class__ is bytes:
                sha = sha.encode()
                key = key.encode()
                if size == 5:
                    return _EVALSHA_5 % (len(sha), sha, len(key), key, len(owner), owner)
                if size == 7:
                    value, ms = command[5], command[6]
                    if value.__class__ is bytes and ms.__class__ is int:
                        ms = b"%d" % ms
                        return _EVALSHA_7 % (
                            len(sha),
                            sha,
                            len(key),
                            key,
                            len(owner),
                            owner,
                            len(value),
                            value,
                            len(ms),
                            ms,
                        )
    elif name == "GET" and size == 2:
        key = command[1]
        if key.__class__ is str:
            key = key.encode()
            return _GET % (len(key), key)
    return _pack_any(command)


class _Error:
    """An error reply, kept apart from data replies."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


class PythonReader:
    """RESP2 reply parser used when hiredis is not installed (same feed/gets contract)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def gets(self) -> Any:
        parsed = self._parse(0)
        if parsed is None:
            return False
        value, end = parsed
        del self._buffer[:end]
        return value

    def _parse(self, start: int) -> tuple[Any, int] | None:
        buffer = self._buffer
        line_end = buffer.find(b"\r\n", start)
        if line_end < 0:
            return None
        kind, line = buffer[start : start + 1], bytes(buffer[start + 1 : line_end])
        after = line_end + 2
        if kind == b"+":
            return line, after
        if kind == b"-":
            return _Error(line.decode(errors="replace")), after
        if kind == b":":
            return int(line), after
        if kind == b"$":
            length = int(line)
            if length < 0:
                return None, after
            if len(buffer) < after + length + 2:
                return None
            return bytes(buffer[after : after + length]), after + length + 2
        if kind == b"*":
            count = int(line)
            if count < 0:
                return None, after
            items = []
            for _ in range(count):
                parsed = self._parse(after)
                if parsed is None:
                    return None
                item, after = parsed
                items.append(item)
            return items, after
        raise RedisConnectionError(f"unexpected RESP reply type {kind!r}")


#: Commands whose reply is an integer (the fencing scripts); every other one we send answers
#: with a bulk string, nil or a status.
_INT_REPLIES = frozenset({"EVALSHA", "EVAL"})


def _error(reply: Any) -> Exception | None:
    if hiredis is not None and isinstance(reply, hiredis.ReplyError):
        message = str(reply)
    elif isinstance(reply, _Error):
        message = reply.message
    else:
        return None
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    if message.startswith(("WRONGPASS", "NOAUTH")):
        return AuthenticationError(message)
    return ResponseError(message)


#: Kinds of waiters: a bulk/status or an integer reply held until its batch's ECHO has
#: checked the stream, a reply answered at once (the handshake). A ``bytes`` kind is a
#: batch's closing ECHO, with the token it must echo.
_BULK, _INT, _NOW = 0, 1, 2


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: PipelinedConnection) -> None:
        self.owner = owner
        self.reader: Any = hiredis.Reader() if hiredis is not None else PythonReader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are duck-typed

    def data_received(self, data: bytes) -> None:
        if self.owner.protocol is not self:
            return  # a replaced connection: its bytes answer nobody who waits now
        self.reader.feed(data)
        owner = self.owner
        waiters, settling = owner.waiters, owner.settling
        gets, next_waiter, hold = self.reader.gets, waiters.popleft, settling.append
        while True:
            reply = gets()
            if reply is False:
                return
            if not waiters:
                owner.fail(RedisConnectionError("reply without a request"))
                return
            future, _, kind = next_waiter()
            # The common case first: a data reply of the kind its command expects (what the
            # general checks below conclude for it too), held until the batch's ECHO.
            if kind == _BULK:
                if reply is None or reply.__class__ is bytes:
                    assert future is not None  # only a batch's ECHO has none
                    hold((future, reply, None))
                    continue
            elif kind == _INT and reply.__class__ is int:
                assert future is not None
                hold((future, reply, None))
                continue
            if kind.__class__ is bytes:  # the batch's ECHO: are these replies its own?
                refused = _error(reply)
                if reply != kind and refused is None:
                    owner.fail(RedisConnectionError("Redis replies out of step; reconnecting"))
                    return
                owner.settling = []
                unchecked = None
                if refused is not None:
                    # Redis refused the ECHO itself (NOAUTH, NOPERM for a user whose ACL lacks
                    # ECHO): the token is unchecked. Error replies still go to their callers
                    # (an error never hands anyone another caller's record); data replies fail.
                    unchecked = RedisConnectionError(
                        f"Redis refused the ECHO that checks its replies ({refused}); "
                        "allow ECHO for this user"
                    )
                for waiting, result, error in settling:
                    if waiting.done():
                        continue
                    if error is not None:
                        waiting.set_exception(error)
                    elif unchecked is not None:
                        waiting.set_exception(unchecked)
                    else:
                        waiting.set_result(result)
                settling = owner.settling
                hold = settling.append
                continue
            error = _error(reply)
            assert future is not None
            if error is None and isinstance(reply, int) is not (kind == _INT):
                # A reply of the wrong kind: a proxy lost something in between.
                desync = RedisConnectionError("Redis replies out of step; reconnecting")
                if not future.done():
                    future.set_exception(desync)
                owner.fail(desync)
                return
            if kind == _NOW:
                if not future.done():
                    if error is None:
                        future.set_result(reply)
                    else:
                        future.set_exception(error)
            else:
                hold((future, reply, error))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.owner.protocol is not self:
            return  # already failed and replaced; the new connection's waiters are not ours
        self.owner.fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))


class RedisAddress:
    """Where and how to connect, from a ``redis://`` or ``rediss://`` URL."""

    __slots__ = ("db", "host", "password", "port", "tls", "tls_verify", "username")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"unsupported scheme {parts.scheme!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        path = parts.path.strip("/")
        self.db = int(path) if path else 0
        self.tls = parts.scheme == "rediss"
        self.tls_verify = "ssl_cert_reqs=none" not in (parts.query or "")

    def hello(self) -> list[Command]:
        """The commands a new connection sends first."""
        commands: list[Command] = []
        if self.password is not None:
            if self.username is None:
                commands.append(("AUTH", self.password))
            else:
                commands.append(("AUTH", self.username, self.password))
        if self.db:
            commands.append(("SELECT", self.db))
        return commands

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context()
        if not self.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def describe(self) -> str:
        return f"{self.host}:{self.port}"


def _unsolicited(sock: socket.socket, poller: select.poll) -> bool:
    """Bytes (or EOF) waiting before we sent anything: a duplicated or stray reply, or a
    connection the server closed. Either way the socket must not serve the next command.

    ``poller`` has ``sock`` registered for reading (one per connection, made at connect: not
    select(), which fails on descriptors above 1023).
    """
    if not poller.poll(0):
        return sock.__class__ is not socket.socket and _tls_pending(sock)
    if sock.__class__ is socket.socket:
        return True  # readable: data or EOF, both unusable for a new command
    if not isinstance(sock, ssl.SSLSocket):
        return True
    # TLS 1.3 servers send session tickets after the handshake: the socket is readable with
    # no application data. Only a real byte (or EOF) counts.
    if sock.pending() > 0:
        return True
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(1) is not None  # a byte, or b"" at EOF: unusable either way
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return False
    finally:
        sock.settimeout(timeout)


def _tls_pending(sock: socket.socket) -> bool:
    """Decrypted bytes already buffered inside the TLS layer (the descriptor shows none)."""
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


#: A thread's connection: its socket, reply reader, the pid that opened it, and a poller with
#: the socket registered (``_unsolicited``).
_State = tuple[socket.socket, Any, int, select.poll]


class BlockingConnection:
    """For sync callers: one blocking socket per thread, one command per round trip.

    Leaner than redis-py's pool (no checkout lock, no retry wrapper): WSGI threads each keep
    their own connection. A timeout or socket error closes that thread's socket, so a late
    reply can never be read as the answer to the next command.
    """

    def __init__(self, url: str, *, socket_timeout: float, socket_connect_timeout: float) -> None:
        self.address = RedisAddress(url)
        self.socket_timeout = socket_timeout
        self.socket_connect_timeout = socket_connect_timeout
        self._local = threading.local()
        #: Every thread's open socket, so that ``close_all`` can close the sockets of threads
        #: that are gone or never call in again (the lease renewer's, a finished WSGI
        #: thread's): left to the garbage collector, each would be an "unclosed socket".
        self._open: dict[socket.socket, threading.Thread] = {}
        self._open_lock = threading.Lock()
        renew_after_fork(self, "_open_lock")

    def execute(self, command: Command) -> Any:
        state = getattr(self._local, "state", None)
        # None yet, inherited across fork, or closed by close_all(): connect.
        if state is None or state[2] != os.getpid() or state[0].fileno() < 0:
            state = self._connect()
        try:
            reply = self._round_trip(state, command)
        except OSError as exc:
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(
                    f"no reply from Redis within {self.socket_timeout}s"
                ) from exc
            raise RedisConnectionError(f"Redis connection failed: {exc}") from exc
        if reply is None or reply.__class__ is bytes or reply.__class__ is int:
            return reply  # a data reply: no error to look for
        error = _error(reply)
        if error is not None:
            raise error
        return reply

    def _round_trip(self, state: _State, command: Command) -> Any:
        """Send one command and read its reply; on ANY exception the socket is closed.

        A signal handler's exception (``signal.alarm`` timeouts, Celery's soft time limit),
        ``KeyboardInterrupt`` or a gevent timeout can land between the send and the read:
        the reply then stays unread on the socket, and the next command on this thread would
        read it as its own. Closing is the only safe way out (redis-py does the same, its
        issue 1128). The exception itself propagates unchanged.
        """
        sock, reader, _, poller = state
        try:
            if _unsolicited(sock, poller):
                raise ConnectionResetError("Redis sent data nobody asked for; reconnecting")
            sock.sendall(pack(command))
            reply = reader.gets()
            while reply is False:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionResetError("Redis closed the connection")
                reader.feed(data)
                reply = reader.gets()
            if reader.gets() is not False:  # a second reply to one command: out of step
                raise ConnectionResetError("Redis replies out of step; reconnecting")
            return reply
        except BaseException:
            self.close()
            raise

    def _connect(self) -> _State:
        address = self.address
        self._local.state = None
        sock: socket.socket | None = None
        try:
            sock = socket.create_connection(
                (address.host, address.port), timeout=self.socket_connect_timeout
            )
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            context = address.ssl_context()
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=address.host)
            sock.settimeout(self.socket_timeout)
        except BaseException as exc:
            if sock is not None:  # never leak a half-made socket, whatever interrupted us
                with contextlib.suppress(OSError):
                    sock.close()
            if isinstance(exc, OSError):
                raise RedisConnectionError(
                    f"cannot connect to Redis at {address.describe()}: {exc}"
                ) from exc
            raise
        reader: Any = hiredis.Reader() if hiredis is not None else PythonReader()
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        state = (sock, reader, os.getpid(), poller)
        self._local.state = state
        self._track(sock)
        for command in address.hello():
            try:
                error = _error(self._round_trip(state, command))
            except OSError as exc:
                raise RedisConnectionError(f"Redis handshake failed: {exc}") from exc
            if error is not None:
                self.close()
                raise error
        return state

    def _track(self, sock: socket.socket) -> None:
        """Remember this thread's socket; close those of threads that have ended."""
        with self._open_lock:
            ended = [s for s, thread in self._open.items() if not thread.is_alive()]
            for old in ended:
                del self._open[old]
            self._open[sock] = threading.current_thread()
        for old in ended:
            with contextlib.suppress(OSError):
                old.close()

    def close(self) -> None:
        """Close this thread's socket (the next command on this thread reconnects)."""
        state = getattr(self._local, "state", None)
        self._local.state = None
        if state is not None:
            with self._open_lock:
                self._open.pop(state[0], None)
            with contextlib.suppress(OSError):
                state[0].close()

    def __del__(self) -> None:
        # A layer dropped without close(): close its sockets rather than leave each to the
        # collector as an "unclosed socket".
        with contextlib.suppress(Exception):  # nothing to report from a finalizer
            self.close_all()

    def close_all(self) -> None:
        """Close every thread's socket (the layer's ``close()``); threads reconnect on use."""
        with self._open_lock:
            sockets, self._open = list(self._open), {}
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()


def _packable(
    batch: list[tuple[Command, asyncio.Future[Any]]],
) -> tuple[list[tuple[Command, asyncio.Future[Any]]], list[bytes]]:
    """The commands of ``batch`` that pack, and their bytes; the others' callers get the error
    (nothing of theirs is written or awaited, so the stream stays in step)."""
    kept: list[tuple[Command, asyncio.Future[Any]]] = []
    packed: list[bytes] = []
    for command, future in batch:
        try:
            packed.append(pack(command))
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            continue
        kept.append((command, future))
    return kept, packed


class PipelinedConnection(TickBatcher):
    """One connection per event loop; commands of one tick leave in one write."""

    __slots__ = (
        "address",
        "connecting",
        "protocol",
        "sequence",
        "settling",
        "socket_connect_timeout",
        "socket_timeout",
        "waiters",
        "watchdog",
    )

    def __init__(
        self,
        url: str,
        loop: asyncio.AbstractEventLoop,
        *,
        socket_timeout: float,
        socket_connect_timeout: float,
    ) -> None:
        super().__init__(loop)
        self.address = RedisAddress(url)
        self.socket_timeout = socket_timeout
        self.socket_connect_timeout = socket_connect_timeout
        #: Commands sent and awaiting replies, in order: (future, send time, kind).
        self.waiters: deque[tuple[asyncio.Future[Any] | None, float, Any]] = deque()
        #: Replies of the current batch, held until its ECHO comes back: Redis answers in
        #: order, so a reply lost or duplicated on the way (a faulty proxy) shifts every later
        #: one, and only a token at the end of each batch shows it before anyone is answered.
        self.settling: list[tuple[asyncio.Future[Any], Any, Exception | None]] = []
        self.sequence = 0
        self.protocol: _Protocol | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.watchdog: asyncio.TimerHandle | None = None

    def _flush(self) -> None:
        protocol = self.protocol
        if (
            protocol is not None
            and protocol.transport is not None
            and protocol.transport.is_closing()
        ):
            # Closing (a peer's FIN mid-write) before connection_lost ran: the commands in
            # flight will never be answered here, and the next connection's replies must not
            # reach them. Fail them now, then reconnect.
            self.fail(RedisConnectionError("connection to Redis is closing"))
            protocol = None
        if protocol is None or protocol.transport is None:
            if self.connecting is None:
                self.connecting = self.loop.create_task(self._connect())
            return  # _connect flushes once connected
        batch, self.queue = self.queue, []
        if not batch:
            return
        try:
            packed = [pack(command) for command, _ in batch]
        except Exception:  # an argument RESP cannot carry: its caller alone gets the error
            batch, packed = _packable(batch)
            if not batch:
                return
        now = time.monotonic()
        self.sequence += 1
        token = b"%d" % self.sequence
        waiters = self.waiters
        waiters.extend(
            (future, now, _INT if command[0] in _INT_REPLIES else _BULK)
            for command, future in batch
        )
        waiters.append((None, now, token))
        packed.append(b"*2\r\n$4\r\nECHO\r\n$%d\r\n%b\r\n" % (len(token), token))
        protocol.transport.write(b"".join(packed))
        if self.watchdog is None:
            self.watchdog = self.loop.call_later(self.socket_timeout, self._check_timeout)

    async def _connect(self) -> None:
        address = self.address
        try:
            transport, protocol = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: _Protocol(self),
                    address.host,
                    address.port,
                    ssl=address.ssl_context(),
                ),
                self.socket_connect_timeout,
            )
            protocol.transport = transport
            self.protocol = protocol
            hello = address.hello()
            if hello:
                # Jump the queue: these must be the connection's first commands.
                futures = [self.loop.create_future() for _ in hello]
                now = time.monotonic()
                self.waiters.extendleft((f, now, _NOW) for f in reversed(futures))
                assert protocol.transport is not None
                protocol.transport.write(b"".join(pack(c) for c in hello))
                await asyncio.wait_for(asyncio.gather(*futures), self.socket_connect_timeout)
        except BaseException as exc:  # cancelled too: never leave ``connecting`` set for good
            self.connecting = None
            self._close_protocol()
            error = (
                exc
                if isinstance(exc, (RedisConnectionError, AuthenticationError))
                else (
                    RedisConnectionError(f"cannot connect to Redis at {address.describe()}: {exc}")
                )
            )
            batch, self.queue = self.queue, []
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        self.connecting = None
        self._flush()

    def _check_timeout(self) -> None:
        self.watchdog = None
        if not self.waiters:
            return
        waited = time.monotonic() - self.waiters[0][1]
        if waited >= self.socket_timeout:
            self.fail(RedisTimeoutError(f"no reply from Redis within {self.socket_timeout}s"))
            self._close_protocol()
        else:
            self.watchdog = self.loop.call_later(self.socket_timeout - waited, self._check_timeout)

    def fail(self, error: Exception) -> None:
        """Fail every command in flight (the connection is unusable); the next reconnects."""
        waiters, self.waiters = self.waiters, deque()
        settling, self.settling = self.settling, []
        for future in [f for f, _, _ in settling] + [f for f, _, _ in waiters]:
            if future is not None and not future.done():
                future.set_exception(error)
        self._close_protocol()

    def _close_protocol(self) -> None:
        protocol, self.protocol = self.protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()

    def close(self) -> None:
        self.fail(RedisConnectionError("connection closed"))
