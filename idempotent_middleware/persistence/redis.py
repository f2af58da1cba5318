"""Redis persistence: one class for sync callers (WSGI) and async callers (ASGI).

Commands, one round trip each:

- claim: ``SET key record NX PX lease GET`` (Redis >= 7.0) claims the key or returns the live
  record in the same reply. Older servers reject ``NX`` with ``GET``; the layer then falls back,
  once and for good, to ``SET NX PX`` followed by ``GET`` on conflict.
- lookup: ``GET``.
- complete, release, renew: tiny Lua scripts (``lua/``) that compare the owner token before
  writing, run with ``EVALSHA`` (``NOSCRIPT`` -> ``EVAL``, which also caches the script). Each
  touches one key, so they run unchanged on Redis Cluster.

Records are bytes (see ``base.encode_record``): no JSON in Lua, no base64, no pickle.
Each Redis operation below is a small generator of commands, run by ``_run`` (sync client) or
``_run_async`` (asyncio client), so the command logic exists once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import weakref
from collections.abc import Callable, Coroutine, Generator
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import parse_qsl, urlsplit

from ..exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyConfigurationError,
    IdempotencyCorruptRecordError,
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyOwnershipError,
    IdempotencyPersistenceLayerError,
)
from ._batch import TickBatcher
from .base import (
    INVALIDATE_REFUSED,
    BasePersistenceLayer,
    DataRecord,
    check_limit,
    decode_record,
    describe_record,
    encode_record,
)

try:
    import redis as _redis
    import redis.asyncio as _redis_asyncio
    from redis.exceptions import NoScriptError, RedisError, ResponseError
except ImportError:  # pragma: no cover - the package imports without the redis extra
    _redis = None  # type: ignore[assignment]

    class RedisError(Exception):  # type: ignore[no-redef]
        """Stand-in so that this module imports; the layer refuses to start without redis."""

    NoScriptError = ResponseError = RedisError  # type: ignore[misc,assignment]

if TYPE_CHECKING:
    from ._resp import BlockingConnection, PipelinedConnection

Command = tuple[Any, ...]
Ops = Generator[Command, Any, Any]
#: Thrown back into the command generators, which turn them into typed errors: redis-py's own
#: errors, socket errors, and whatever else a client lets escape mid-handshake.
_IO_ERRORS = Exception


def _script(name: str) -> tuple[bytes, str]:
    body = (resources.files(__package__) / "lua" / name).read_bytes()
    return body, hashlib.sha1(body).hexdigest()


_COMPLETE = _script("complete.lua")
_RELEASE = _script("release.lua")
_RENEW = _script("renew.lua")
_INVALIDATE = _script("invalidate.lua")


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern (SCAN MATCH)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _ms_until(timestamp_seconds: float) -> int:
    """Milliseconds from now until ``timestamp_seconds``, at least 1 (a valid PX)."""
    ms = int((timestamp_seconds - time.time()) * 1000)
    return ms if ms > 1 else 1  # max(ms, 1) without the builtin's argument tuple


def _lease_ms(record: DataRecord) -> int:
    """What is left of the record's in-progress lease, in milliseconds (a PX value)."""
    # _ms_until's arithmetic, inlined: this runs on every claim.
    ms = int(((record.in_progress_expiry_timestamp or 0) / 1000 - time.time()) * 1000)
    return ms if ms > 1 else 1


def _is_async_client(client: Any) -> bool:
    return asyncio.iscoroutinefunction(getattr(client, "execute_command", None))


def _lean_connection_can_serve(url: str) -> bool:
    """Plain redis:// and rediss:// URLs; any other option goes to redis-py, which knows it."""
    parts = urlsplit(url)
    return parts.scheme in ("redis", "rediss") and parts.query in ("", "ssl_cert_reqs=none")


#: redis-py's SET reply callback turns a value into a bool unless told the command had GET.
_SET_GET = {"get": True}
_NO_OPTIONS: dict[str, Any] = {}


def _options(command: Command) -> dict[str, Any]:
    return _SET_GET if command[0] == "SET" else _NO_OPTIONS


_NO_DECODING = "the Redis client must be created with decode_responses=False (records are bytes)"
#: redis-py's URL parser reads these (any case) as False; any other value turns the option on.
_FALSE_STRINGS = frozenset({"", "0", "f", "false", "n", "no"})


def _url_decodes_responses(url: str) -> bool:
    for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if name == "decode_responses" and value.lower() not in _FALSE_STRINGS:
            return True
    return False


def _client_decodes_responses(client: Any) -> bool:
    """Whether a redis-py client (plain, Sentinel, Cluster, sync or asyncio) decodes replies."""
    get_encoder = getattr(client, "get_encoder", None)
    if callable(get_encoder):
        try:
            encoder = get_encoder()
        except Exception:  # a client without an encoder yet: its pool still tells
            encoder = None
        if getattr(encoder, "decode_responses", False) is True:
            return True
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    return isinstance(kwargs, dict) and kwargs.get("decode_responses") is True


def _refuse_decoding(client: Any) -> Any:
    if client is not None and _client_decodes_responses(client):
        raise IdempotencyConfigurationError(_NO_DECODING)
    return client


def _no_retry(*, sync: bool) -> Any:
    """A redis-py retry policy that never resends a command.

    redis-py (v6+) retries commands that timed out; a resent claim can meet its own record,
    and a resent script runs twice. The layer decides itself what a failure means.
    """
    from redis.backoff import NoBackoff

    if sync:
        from redis.retry import Retry
    else:
        from redis.asyncio.retry import Retry  # type: ignore[assignment]
    return Retry(NoBackoff(), 0)


def _is_cluster(client: Any) -> bool:
    if client is None or _redis is None:
        return False
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import RedisCluster

    return isinstance(client, (RedisCluster, AsyncRedisCluster))


class _Direct:
    """One command, one round trip (Cluster clients route each command to its node)."""

    __slots__ = ("client", "ready")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.ready: asyncio.Future[Any] | None = None

    async def execute(self, command: Command) -> Any:
        if self.ready is None or not self.ready.done() or self.ready.exception() is not None:
            await self._initialize()
        return await self.client.execute_command(*command, **_options(command))

    async def _initialize(self) -> None:
        """Let the client discover its topology once, before concurrent commands race it.

        redis-py's asyncio RedisCluster fails some of the first burst of concurrent commands
        while it is still discovering the cluster; ``initialize()`` first avoids that.
        """
        initialize = getattr(self.client, "initialize", None)
        if initialize is None:
            self.ready = asyncio.get_running_loop().create_future()
            self.ready.set_result(None)
            return
        if self.ready is None or (self.ready.done() and self.ready.exception() is not None):
            self.ready = asyncio.ensure_future(initialize())
        await asyncio.shield(self.ready)


class _AutoPipeline(TickBatcher):
    """Coalesces the commands of concurrent requests into shared round trips (redis-py).

    Each tick's commands leave as one non-transactional pipeline; each caller still gets its
    own reply or its own error.
    """

    __slots__ = ("client",)

    def __init__(self, client: Any, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.client = client

    def _flush(self) -> None:
        batch, self.queue = self.queue, []
        self.loop.create_task(self._send(batch))

    async def _send(self, batch: list[tuple[Command, asyncio.Future[Any]]]) -> None:
        try:
            if len(batch) == 1:
                command = batch[0][0]
                replies = [await self.client.execute_command(*command, **_options(command))]
            else:
                pipe = self.client.pipeline(transaction=False)
                for command, _ in batch:
                    pipe.execute_command(*command, **_options(command))
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


_Executor: TypeAlias = "_Direct | _AutoPipeline | PipelinedConnection"


def _close_transport_socket(transport: Any) -> None:
    """Close the socket under an asyncio transport whose loop is closed (no callbacks run).

    ``transport.close()`` needs its loop to deliver ``connection_lost``, and a closed loop
    refuses (after marking the transport closing, which quiets a stream writer's finaliser).
    The socket is closed directly, and detached from an asyncio selector transport (its
    ``_sock``) so the transport's own finaliser has nothing left to report as unclosed.
    """
    if transport is None:
        return
    wrapped = transport.get_extra_info("socket")
    sock = getattr(wrapped, "_sock", wrapped)  # asyncio hands out a TransportSocket wrapper
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
    with contextlib.suppress(RuntimeError, AttributeError):  # loop closed, once it is marked
        transport.close()
    if getattr(transport, "_sock", None) is not None:
        with contextlib.suppress(AttributeError):
            transport._sock = None


def _abandon(executor: Any) -> None:
    """Release what a dead loop's executor holds: our own connection or a redis-py pool."""
    protocol = getattr(executor, "protocol", None)
    if protocol is not None:  # PipelinedConnection
        executor.protocol = None
        executor.waiters.clear()
        executor.settling.clear()
        executor.queue.clear()
        _close_transport_socket(protocol.transport)
    pool = getattr(getattr(executor, "client", None), "connection_pool", None)
    connections = [
        *getattr(pool, "_available_connections", ()),
        *getattr(pool, "_in_use_connections", ()),
    ]
    for connection in connections:
        writer = getattr(connection, "_writer", None)
        _close_transport_socket(getattr(writer, "transport", None))
        if writer is not None:
            # Detached as redis-py's own _close() does, which needs a running loop.
            with contextlib.suppress(AttributeError):
                connection._writer = connection._reader = None


class RedisPersistenceLayer(BasePersistenceLayer):
    """Records in Redis (standalone, Sentinel-managed master, or Cluster).

    ``url=`` makes clients lazily: a ``redis.Redis`` for sync use and one
    ``redis.asyncio.Redis`` per event loop for async use. ``client=`` takes a ready client of
    either kind (``redis.Redis``, ``redis.asyncio.Redis``, ``RedisCluster`` sync or async, or
    ``Sentinel.master_for(...)``); pass ``async_client=`` too to serve both worlds.
    An asyncio client belongs to the event loop it first ran on; code that runs several loops
    one after another (``asyncio.run`` per job) passes ``async_client_factory=`` instead, a
    callable that makes one client per loop. Clients must not decode responses (records are
    bytes).
    """

    kind = "redis"

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        async_client: Any = None,
        async_client_factory: Callable[[], Any] | None = None,
        key_prefix: str = "idempotency:",
        socket_timeout: float = 2.0,
        socket_connect_timeout: float = 2.0,
        auto_pipeline: bool = True,
    ) -> None:
        super().__init__()
        if _redis is None:
            raise ImportError(
                "RedisPersistenceLayer needs redis-py: pip install 'idempotent-middleware[redis]'"
            )
        if url is None and client is None and async_client is None and not async_client_factory:
            raise ValueError("pass url=, client= or async_client_factory=")
        self.url = url
        self.key_prefix = key_prefix
        self._client_kwargs: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_connect_timeout,
        }
        self._sync_client: Any = None
        self._async_client: Any = async_client
        self._async_client_factory = async_client_factory
        self._async_client_loop: asyncio.AbstractEventLoop | None = None
        if client is not None:
            if _is_async_client(client):
                self._async_client = client
            else:
                self._sync_client = client
        for given in (self._sync_client, self._async_client):
            _refuse_decoding(given)
        if url is not None and _url_decodes_responses(url):
            raise IdempotencyConfigurationError(_NO_DECODING)
        self._loop_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Executor] = (
            weakref.WeakKeyDictionary()
        )
        self._last_executor: tuple[asyncio.AbstractEventLoop, _Executor] | None = None
        self._sync_execute: Callable[[Command], Any] | None = None
        self._blocking: BlockingConnection | None = None
        #: None until the first claim tells whether the server takes SET ... NX ... GET.
        self._set_nx_get: bool | None = None
        # Cluster clients route each command to its node; pipelining across slots is theirs.
        self._pipelining = auto_pipeline and not _is_cluster(self._async_client)
        self._auto_pipeline = auto_pipeline

    # --- Clients ----------------------------------------------------------------------------
    def sync_client(self) -> Any:
        if self._sync_client is None:
            if self.url is None:
                raise TypeError("this layer has only an async client; pass url= or a sync client")
            self._sync_client = _redis.Redis.from_url(
                self.url, retry=_no_retry(sync=True), **self._client_kwargs
            )
        return self._sync_client

    def async_client(self) -> Any:
        """The redis-py asyncio client in use on this loop (None with the lean connection)."""
        executor = self._executor()
        return getattr(executor, "client", None)

    def _executor(self) -> _Executor:
        """This event loop's way to send commands (connections are bound to their loop)."""
        loop = asyncio.get_running_loop()
        last = self._last_executor
        if last is not None and last[0] is loop:
            return last[1]
        executor = self._loop_clients.get(loop)
        if executor is None:
            self._forget_closed_loops()
            executor = self._new_executor(loop)
            self._loop_clients[loop] = executor
        self._last_executor = (loop, executor)
        return executor

    def _forget_closed_loops(self) -> None:
        """Drop the executors of closed loops and close their sockets (``asyncio.run`` per job).

        An executor holds its loop strongly (futures, timers, transports), so the weak keys
        alone never free anything: each ``asyncio.run`` would leak a loop, a connection and a
        socket. A closed loop can run nothing any more, so its executor is dead; its sockets
        are closed directly (the loop cannot schedule a transport close now).
        """
        last = self._last_executor
        if last is not None and last[0].is_closed():
            self._last_executor = None
        # Several threads may each run loops on this layer (``asyncio.run`` per job in a pool)
        # and forget the same closed loop at once: the key list is taken in one step (no
        # iterator that another thread's insert breaks) and each thread abandons only what its
        # own pop removed, so an executor is closed once and nobody meets a KeyError.
        for ref in self._loop_clients.keyrefs():
            loop = ref()
            if loop is not None and loop.is_closed():
                executor = self._loop_clients.pop(loop, None)
                if executor is not None:
                    _abandon(executor)

    def _new_executor(self, loop: asyncio.AbstractEventLoop) -> _Executor:
        client = self._async_client
        if self._async_client_factory is not None:
            # Checked per client: the factory may hand out anything (first use: 503, logged).
            client = _refuse_decoding(self._async_client_factory())
            pipelining = self._auto_pipeline and not _is_cluster(client)
            return _AutoPipeline(client, loop) if pipelining else _Direct(client)
        if client is not None:
            if self._async_client_loop is not None and self._async_client_loop is not loop:
                raise IdempotencyPersistenceLayerError(
                    "the async_client given to RedisPersistenceLayer belongs to the event loop "
                    "it first ran on; pass async_client_factory= to serve several loops"
                )
            self._async_client_loop = loop
        else:
            assert self.url is not None
            if self._pipelining and _lean_connection_can_serve(self.url):
                from ._resp import PipelinedConnection

                return PipelinedConnection(
                    self.url,
                    loop,
                    socket_timeout=self._client_kwargs["socket_timeout"],
                    socket_connect_timeout=self._client_kwargs["socket_connect_timeout"],
                )
            client = _redis_asyncio.Redis.from_url(
                self.url, retry=_no_retry(sync=False), **self._client_kwargs
            )
        return _AutoPipeline(client, loop) if self._pipelining else _Direct(client)

    def _name(self, idempotency_key: str) -> str:
        return self.key_prefix + idempotency_key

    # --- Drivers for the command generators -------------------------------------------------
    def _run(self, ops: Ops) -> Any:
        """``_steps.run`` inlined (one call fewer per command), same contract as ``_run_async``."""
        execute = self._sync_execute or self._sync_executor()
        try:
            command = ops.send(None)
            while True:
                try:
                    reply = execute(command)
                except _IO_ERRORS as exc:
                    command = ops.throw(exc)
                else:
                    command = ops.send(reply)
        except StopIteration as stop:
            return stop.value

    def _sync_executor(self) -> Callable[[Command], Any]:
        """The lean blocking connection for plain URLs, else the redis-py client."""
        executor = self._sync_execute
        if executor is None:
            if self._sync_client is None and self.url and _lean_connection_can_serve(self.url):
                from ._resp import BlockingConnection

                self._blocking = BlockingConnection(
                    self.url,
                    socket_timeout=self._client_kwargs["socket_timeout"],
                    socket_connect_timeout=self._client_kwargs["socket_connect_timeout"],
                )
                executor = self._blocking.execute
            else:
                client = self.sync_client()

                def executor(command: Command) -> Any:
                    return client.execute_command(*command, **_options(command))

            self._sync_execute = executor
        return executor

    async def _run_async(self, ops: Ops) -> Any:
        """``_steps.run_async`` with ``execute`` awaited in this frame.

        The store call is then one coroutine deep instead of three (the ``_*_async`` methods
        return this coroutine, ``run_async`` is inlined): every reply resumes, and an existing
        record's exception unwinds, two frames fewer. Same contract: a command's error is
        thrown into ``ops``, whose own outcome (a value or a typed error) is the call's.
        """
        if self._async_client is None and self.url is None and self._async_client_factory is None:
            # Only a sync client: keep the event loop free.
            return await asyncio.to_thread(self._run, ops)
        last = self._last_executor  # _executor()'s fast path, inlined
        if last is not None and last[0] is asyncio.get_running_loop():
            execute = last[1].execute
        else:
            execute = self._executor().execute
        try:
            command = ops.send(None)
            while True:
                try:
                    reply = await execute(command)
                except _IO_ERRORS as exc:
                    command = ops.throw(exc)
                else:
                    command = ops.send(reply)
        except StopIteration as stop:
            return stop.value

    # --- The operations, written once ---------------------------------------------------------
    def _ops_get(self, idempotency_key: str) -> Ops:
        try:
            raw = yield ("GET", self.key_prefix + idempotency_key)
        except Exception as exc:
            raise IdempotencyPersistenceLayerError(
                f"GET failed: {type(exc).__name__}: {exc}"
            ) from exc
        if raw is None:
            raise IdempotencyItemNotFoundError(idempotency_key)
        return decode_record(idempotency_key, raw)

    def _ops_put(self, record: DataRecord) -> Ops:
        name = self.key_prefix + record.idempotency_key
        value = encode_record(record)
        lease_ms = _lease_ms(record)
        vanished = False
        try:
            if self._set_nx_get is not False:
                try:
                    raw = yield ("SET", name, value, "NX", "PX", lease_ms, "GET")
                    self._set_nx_get = True
                except ResponseError as exc:
                    if self._set_nx_get or "syntax" not in str(exc).lower():
                        raise
                    self._set_nx_get = False  # Redis < 7.0: two commands from now on
            if self._set_nx_get is False:
                won = yield ("SET", name, value, "NX", "PX", lease_ms)
                raw = None if won else (yield ("GET", name))
                vanished = not won and raw is None  # expired in between
        except Exception as exc:  # any client failure, typed or not, is the store's
            raise IdempotencyPersistenceLayerError(
                f"claim failed: {type(exc).__name__}: {exc}"
            ) from exc
        if vanished:  # let the caller try again
            raise IdempotencyItemAlreadyExistsError(None)
        if raw is not None:
            existing = decode_record(record.idempotency_key, raw)
            if existing.owner == record.owner and existing.status == record.status:
                # Our own claim: the client (redis-py retries timed-out commands) sent this SET
                # twice and the first one landed. The owner token is 16 random bytes of this
                # execution, so nobody else can hold it: the claim is won.
                return
            raise IdempotencyItemAlreadyExistsError(existing)

    def _ops_script(self, script: tuple[bytes, str], record: DataRecord, *args: Any) -> Ops:
        body, sha = script
        command = ("EVALSHA", sha, 1, self.key_prefix + record.idempotency_key, record.owner, *args)
        try:
            try:
                done = yield command
            except NoScriptError:
                done = yield ("EVAL", body, *command[2:])
        except Exception as exc:
            raise IdempotencyPersistenceLayerError(
                f"script failed: {type(exc).__name__}: {exc}"
            ) from exc
        if not done:
            raise IdempotencyOwnershipError(record.idempotency_key)
        return None

    def _ops_update(self, record: DataRecord) -> Ops:
        ttl = _ms_until(record.expiry_timestamp or time.time() + 1)
        return (yield from self._ops_script(_COMPLETE, record, encode_record(record), ttl))

    def _ops_renew(self, record: DataRecord) -> Ops:
        # C1: the whole renewed claim is stored, so its inner lease time matches the TTL.
        return (
            yield from self._ops_script(_RENEW, record, encode_record(record), _lease_ms(record))
        )

    # --- The four (five) I/O methods, sync and async -------------------------------------------
    def _get_record(self, idempotency_key: str) -> DataRecord:
        return self._run(self._ops_get(idempotency_key))  # type: ignore[no-any-return]

    def _put_record(self, data_record: DataRecord) -> None:
        self._run(self._ops_put(data_record))

    def _update_record(self, data_record: DataRecord) -> None:
        self._run(self._ops_update(data_record))

    def _delete_record(self, data_record: DataRecord) -> None:
        self._run(self._ops_script(_RELEASE, data_record))

    def _renew_lease(self, data_record: DataRecord) -> None:
        self._run(self._ops_renew(data_record))

    # Plain methods returning ``_run_async``'s coroutine: awaited by the caller, one frame.
    def _get_record_async(self, idempotency_key: str) -> Coroutine[Any, Any, DataRecord]:
        return self._run_async(self._ops_get(idempotency_key))

    def _put_record_async(self, data_record: DataRecord) -> Coroutine[Any, Any, None]:
        return self._run_async(self._ops_put(data_record))

    def _update_record_async(self, data_record: DataRecord) -> Coroutine[Any, Any, None]:
        return self._run_async(self._ops_update(data_record))

    def _delete_record_async(self, data_record: DataRecord) -> Coroutine[Any, Any, None]:
        return self._run_async(self._ops_script(_RELEASE, data_record))

    def _renew_lease_async(self, data_record: DataRecord) -> Coroutine[Any, Any, None]:
        return self._run_async(self._ops_renew(data_record))

    def close(self) -> None:
        """Close the sync connections (every thread's) and those of closed event loops.

        They reconnect if used again. A connection of a loop that still runs belongs to it:
        ``await aclose()`` there (for example at the end of an ``asyncio.run`` job).
        """
        if self._sync_client is not None:
            self._sync_client.close()
        if self._blocking is not None:
            self._blocking.close_all()
        self._forget_closed_loops()

    async def aclose(self) -> None:
        """Close this event loop's connection (it reconnects if used again) and the closed
        loops' ones; call it before the loop ends, as ``redis.asyncio`` asks of its clients."""
        self._forget_closed_loops()
        loop = asyncio.get_running_loop()
        executor = self._loop_clients.pop(loop, None)
        if self._last_executor is not None and self._last_executor[0] is loop:
            self._last_executor = None
        if executor is None:
            return
        if isinstance(executor, (_Direct, _AutoPipeline)):
            if executor.client is not self._async_client:  # ours (url= or the factory's)
                await executor.client.aclose()
            return
        executor.close()
        await asyncio.sleep(0)  # let the transport deliver connection_lost

    # --- Readiness and operator inspection ------------------------------------------------------
    def _ops_ping(self) -> Ops:
        try:
            yield ("PING",)
        except Exception as exc:
            raise IdempotencyPersistenceLayerError(
                f"PING failed: {type(exc).__name__}: {exc}"
            ) from exc

    def ping(self) -> None:
        """PING the server (a readiness probe); a store error if it does not answer."""
        self._run(self._ops_ping())

    async def ping_async(self) -> None:
        await self._run_async(self._ops_ping())

    def _ops_inspect(self, storage_key: str) -> Ops:
        name = self._name(storage_key)
        try:
            raw = yield ("GET", name)
            ttl_ms = yield ("PTTL", name)
        except Exception as exc:
            raise IdempotencyPersistenceLayerError(
                f"GET failed: {type(exc).__name__}: {exc}"
            ) from exc
        if raw is None:
            return None
        record = decode_record(storage_key, raw)
        return describe_record(record, ttl_ms=ttl_ms if ttl_ms >= 0 else None)

    def inspect_record(self, storage_key: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self._run(self._ops_inspect(storage_key))
        return result

    def _ops_scan(self, prefix: str, limit: int) -> Ops:
        pattern = _glob_escape(self.key_prefix + prefix) + "*"
        names: list[bytes] = []
        cursor: Any = 0
        try:
            while True:
                cursor, batch = yield ("SCAN", cursor, "MATCH", pattern, "COUNT", 500)
                names.extend(batch)
                if int(cursor) == 0 or len(names) >= limit:
                    return sorted(set(names))[:limit]
        except Exception as exc:
            raise IdempotencyPersistenceLayerError(
                f"SCAN failed: {type(exc).__name__}: {exc}"
            ) from exc

    def list_records(self, prefix: str = "", limit: int = 100) -> list[dict[str, Any]]:
        """Records under ``prefix`` found by SCAN (never KEYS: it would block the server).
        An undecodable value is listed with status ``"CORRUPT"`` and its ``error``: the
        listing goes on (that record may be the very one being looked for)."""
        check_limit(limit)
        found = []
        skip = len(self.key_prefix)
        for name in self._run(self._ops_scan(prefix, limit)):
            key = (name.decode() if isinstance(name, bytes) else str(name))[skip:]
            try:
                described = self.inspect_record(key)
            except IdempotencyCorruptRecordError as exc:
                described = {"key": key, "status": "CORRUPT", "expires_at": None, "error": str(exc)}
            if described is not None:  # gone between SCAN and GET
                found.append(described)
        return found

    def _ops_invalidate(self, storage_key: str, force: bool) -> Ops:
        body, _ = _INVALIDATE
        try:
            done = yield ("EVAL", body, 1, self._name(storage_key), b"1" if force else b"0")
        except Exception as exc:
            raise IdempotencyPersistenceLayerError(
                f"script failed: {type(exc).__name__}: {exc}"
            ) from exc
        if done == -1:
            raise IdempotencyAlreadyInProgressError(INVALIDATE_REFUSED.format(key=storage_key))
        return done == 1

    def invalidate_record(self, storage_key: str, force: bool = False) -> bool:
        result: bool = self._run(self._ops_invalidate(storage_key, force))
        return result


__all__ = ["RedisPersistenceLayer"]
