"""The Redis layer's I/O on a real server: round trips, scripts, auth, reconnects, timeouts."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from idempotent_middleware import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyPersistenceLayerError,
    RedisPersistenceLayer,
)
from idempotent_middleware.persistence._resp import PythonReader, _pack_any, pack
from idempotent_middleware.persistence.base import DataRecord
from tests.redis_servers import RedisProcess, redis_binary, start_redis


def commandstats(url: str) -> dict[str, int]:
    stats = redis.Redis.from_url(url).info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def client_commands(url: str, before: dict[str, int]) -> dict[str, int]:
    """Commands sent by clients since ``before`` (GETs and SETs inside Lua scripts excluded)."""
    after = commandstats(url)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    scripts = delta.get("evalsha", 0) + delta.get("eval", 0)
    delta["get"] = delta.get("get", 0) - scripts  # every script starts with one GET
    for name in ("set", "del", "pexpire"):
        delta[name] = delta.get(name, 0)
    for name in ("info", "hello", "client", "auth", "select", "ping"):  # connection set-up
        delta.pop(name, None)
    # The lean asyncio connection closes each batch with an ECHO in the same write (its check
    # that replies are in step): no round trip of its own.
    delta.pop("echo", None)
    return {k: v for k, v in delta.items() if v}


def claim(layer: RedisPersistenceLayer, key: str = "s#k") -> DataRecord:
    return layer.new_inprogress_record(key, "fp", 30, 60)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_round_trips_per_operation(redis_url: str, mode: str) -> None:
    """Claim 1, completion 1, duplicate lookup (replay or in flight) 1."""
    layer = RedisPersistenceLayer(url=redis_url)

    async def run(method: str, record: Any) -> None:
        await getattr(layer, method + "_async")(record)

    def call(method: str, record: Any) -> None:
        if mode == "sync":
            getattr(layer, method)(record)
        else:
            asyncio.run(run(method, record))

    first = claim(layer)
    call("_put_record", claim(layer, "s#warm"))  # connection set-up is not per request
    before = commandstats(redis_url)
    call("_put_record", first)
    claimed = client_commands(redis_url, before)
    assert claimed == {"set": 1}

    before = commandstats(redis_url)
    with pytest.raises(IdempotencyItemAlreadyExistsError):
        call("_put_record", claim(layer))
    in_flight = client_commands(redis_url, before)
    assert in_flight == {"set": 1}

    call("_update_record", layer.completed_record(first, b"x", 60))  # loads the script
    second = claim(layer, "s#k2")
    call("_put_record", second)
    before = commandstats(redis_url)
    call("_update_record", layer.completed_record(second, b"y", 60))
    completed = client_commands(redis_url, before)
    assert completed.get("evalsha") == 1
    assert sum(v for k, v in completed.items() if k not in ("set",)) == 1  # SET ran in Lua

    before = commandstats(redis_url)
    with pytest.raises(IdempotencyItemAlreadyExistsError) as info:
        call("_put_record", claim(layer, "s#k2"))
    assert info.value.old_data_record is not None
    assert info.value.old_data_record.response_data == b"y"
    assert client_commands(redis_url, before) == {"set": 1}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_script_cache_flushed_falls_back_to_eval(redis_url: str, mode: str) -> None:
    layer = RedisPersistenceLayer(url=redis_url)
    record = claim(layer)
    layer._put_record(record)
    redis.Redis.from_url(redis_url).script_flush()
    done = layer.completed_record(record, b"ok", 60)
    if mode == "sync":
        layer._update_record(done)
    else:
        asyncio.run(layer._update_record_async(done))
    assert layer._get_record(record.idempotency_key).response_data == b"ok"


def test_old_server_fallback_path(redis_url: str) -> None:
    """Servers before 7.0 reject SET NX GET: SET NX PX, then GET on conflict."""
    layer = RedisPersistenceLayer(url=redis_url)
    layer._set_nx_get = False
    first = claim(layer)
    layer._put_record(first)
    with pytest.raises(IdempotencyItemAlreadyExistsError) as info:
        layer._put_record(claim(layer))
    assert info.value.old_data_record is not None
    assert info.value.old_data_record.owner == first.owner


def test_key_prefix_and_database_from_url(redis_server: RedisProcess) -> None:
    redis_server.cli("FLUSHALL")
    url = f"redis://127.0.0.1:{redis_server.port}/3"
    layer = RedisPersistenceLayer(url=url, key_prefix="app1:")

    async def main() -> None:
        await layer._put_record_async(claim(layer, "POST /x#abc"))

    asyncio.run(main())
    layer._put_record(claim(layer, "POST /y#abc"))
    db3 = redis.Redis(port=redis_server.port, db=3)
    assert sorted(db3.keys()) == [b"app1:POST /x#abc", b"app1:POST /y#abc"]
    assert redis.Redis(port=redis_server.port, db=0).keys() == []


@pytest.fixture
def password_server() -> Iterator[RedisProcess]:
    if redis_binary() is None:
        pytest.skip("redis-server is not installed")
    server = start_redis(password="s3cret")
    server.cli("ACL", "SETUSER", "app", "on", ">apppw", "~*", "+@all")
    yield server
    server.stop()


@pytest.mark.parametrize("credentials", [":s3cret", "app:apppw"])
def test_auth_from_url_sync_and_async(password_server: RedisProcess, credentials: str) -> None:
    url = f"redis://{credentials}@127.0.0.1:{password_server.port}/0"
    layer = RedisPersistenceLayer(url=url)
    layer._put_record(claim(layer, "s#sync"))

    async def main() -> None:
        await layer._put_record_async(claim(layer, "s#async"))
        with pytest.raises(IdempotencyItemAlreadyExistsError):
            await layer._put_record_async(claim(layer, "s#sync"))

    asyncio.run(main())


def test_wrong_password_is_a_persistence_error(password_server: RedisProcess) -> None:
    layer = RedisPersistenceLayer(url=f"redis://:wrong@127.0.0.1:{password_server.port}/0")
    with pytest.raises(IdempotencyPersistenceLayerError):
        layer._put_record(claim(layer))

    async def main() -> None:
        with pytest.raises(IdempotencyPersistenceLayerError):
            await layer._put_record_async(claim(layer))

    asyncio.run(main())


@pytest.fixture
def own_server() -> Iterator[RedisProcess]:
    if redis_binary() is None:
        pytest.skip("redis-server is not installed")
    server = start_redis()
    yield server
    if server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


def test_async_connection_survives_a_server_restart(own_server: RedisProcess) -> None:
    layer = RedisPersistenceLayer(url=own_server.url, socket_connect_timeout=0.5)

    async def main() -> None:
        await layer._put_record_async(claim(layer, "s#1"))
        own_server.stop()
        with pytest.raises(IdempotencyPersistenceLayerError):
            await layer._put_record_async(claim(layer, "s#2"))
        with pytest.raises(IdempotencyPersistenceLayerError):  # still down: fails fast
            await layer._put_record_async(claim(layer, "s#3"))
        own_server.restart()
        started = time.monotonic()
        await layer._put_record_async(claim(layer, "s#4"))
        assert time.monotonic() - started < 1.0

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_stalled_server_times_out_instead_of_hanging(own_server: RedisProcess, mode: str) -> None:
    layer = RedisPersistenceLayer(url=own_server.url, socket_timeout=0.5)
    layer._put_record(claim(layer, "s#warm"))

    async def warm_then_stall() -> None:
        await layer._put_record_async(claim(layer, "s#warm-async"))
        os.kill(own_server.process.pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(IdempotencyPersistenceLayerError):
            await layer._put_record_async(claim(layer, "s#stalled"))
        assert time.monotonic() - started < 2.0

    if mode == "async":
        asyncio.run(warm_then_stall())
    else:
        os.kill(own_server.process.pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(IdempotencyPersistenceLayerError):
            layer._put_record(claim(layer, "s#stalled"))
        assert time.monotonic() - started < 2.0
    os.kill(own_server.process.pid, signal.SIGCONT)


# --- The pure-Python RESP reader must agree with hiredis -------------------------------------
resp_values = st.recursive(
    st.none() | st.integers(-(2**62), 2**62) | st.binary(max_size=50),
    lambda children: st.lists(children, max_size=4),
    max_leaves=12,
)


def encode(value: Any) -> bytes:
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, bytes):
        return b"$%d\r\n%b\r\n" % (len(value), value)
    return b"*%d\r\n" % len(value) + b"".join(encode(v) for v in value)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(resp_values, min_size=1, max_size=5), cut=st.integers(1, 7))
def test_python_reader_parses_split_replies(values: list[Any], cut: int) -> None:
    wire = b"".join(encode(v) for v in values)
    reader = PythonReader()
    got: list[Any] = []
    for start in range(0, len(wire), cut):
        reader.feed(wire[start : start + cut])
        while (reply := reader.gets()) is not False:
            got.append(reply)
    assert got == values


def test_pack_is_resp_array_of_bulk_strings() -> None:
    assert pack(("SET", b"k\r\n", 5)) == b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$1\r\n5\r\n"


_SHA = "a" * 40


@pytest.mark.parametrize(
    "command",
    [
        # The layer's own shapes (templates) ...
        ("SET", "k", b"v", "NX", "PX", 5, "GET"),
        ("SET", "k\u00e9\r\n", b"\x00" * 300, "NX", "PX", 10**12, "GET"),
        ("GET", "k\u00fc"),
        ("EVALSHA", _SHA, 1, "k", b"o" * 16),
        ("EVALSHA", _SHA, 1, "k", b"o" * 16, b"record", 77),
        # ... and near misses, which must take the generic encoder and say the same.
        ("SET", "k", b"v", "NX", "PX", True, "GET"),
        ("SET", "k", bytearray(b"v"), "NX", "PX", 5, "GET"),
        ("SET", b"k", b"v", "NX", "PX", 5, "GET"),
        ("SET", "k", b"v", "NX", "PX", 5),
        ("SET", "k", b"v", "XX", "PX", 5, "GET"),
        ("GET", b"k"),
        ("EVALSHA", _SHA, True, "k", b"o" * 16, b"record", 77),
        ("EVALSHA", _SHA, 1, "k", b"o" * 16, b"record"),
        ("EVALSHA", _SHA, 2, "k", "k2", b"o"),
        ("EVALSHA", _SHA, 1, "k", "owner-as-text", b"record", 77),
        ("ECHO", "x"),
    ],
)
def test_pack_templates_send_the_bytes_of_the_generic_encoder(command: tuple[Any, ...]) -> None:
    assert pack(command) == _pack_any(command)


def test_pack_refuses_what_the_generic_encoder_refuses() -> None:
    for command in [("EVALSHA", _SHA, 1, "k", b"o", b"record", 7.5), ("GET", 1.5)]:
        with pytest.raises(TypeError):
            _pack_any(command)
        with pytest.raises(TypeError):
            pack(command)


def test_a_reply_of_the_wrong_kind_fails_the_connection_instead_of_misleading() -> None:
    """A lossy proxy can shift replies by one: an integer where SET..GET expects a value.
    The lean connection must fail every caller, never hand a reply to the wrong one."""

    async def main() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(65536)
            writer.write(b":1\r\n")  # an EVALSHA-style reply to a SET
            await writer.drain()
            await asyncio.sleep(1)
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        layer = RedisPersistenceLayer(url=f"redis://127.0.0.1:{port}/0", socket_timeout=0.5)
        with pytest.raises(IdempotencyPersistenceLayerError):
            await layer._put_record_async(claim(layer))
        server.close()

    asyncio.run(main())


# --- Item 16: clients that decode responses are a configuration error --------------------------
def test_item16_decode_responses_is_refused_for_every_client() -> None:
    import redis.asyncio

    from idempotent_middleware import IdempotencyConfigurationError

    dead = "redis://127.0.0.1:1/0"
    for make in (
        lambda: RedisPersistenceLayer(url=dead + "?decode_responses=true"),
        lambda: RedisPersistenceLayer(url=dead + "?decode_responses=True&socket_timeout=1"),
        lambda: RedisPersistenceLayer(client=redis.Redis.from_url(dead, decode_responses=True)),
        lambda: RedisPersistenceLayer(
            async_client=redis.asyncio.Redis.from_url(dead, decode_responses=True)
        ),
        lambda: RedisPersistenceLayer(
            client=redis.asyncio.Redis.from_url(dead, decode_responses=True)
        ),
    ):
        with pytest.raises(IdempotencyConfigurationError) as info:
            make()
        assert isinstance(info.value, ValueError)
        assert isinstance(info.value, IdempotencyPersistenceLayerError)
    RedisPersistenceLayer(url=dead + "?decode_responses=false")  # explicit "no" is fine


def test_item16_factory_client_decoding_is_refused_at_first_use_and_answers_503() -> None:
    import redis.asyncio

    from idempotent_middleware import IdempotencyConfigurationError, IdempotencyMiddleware

    layer = RedisPersistenceLayer(
        async_client_factory=lambda: redis.asyncio.Redis.from_url(
            "redis://127.0.0.1:1/0", decode_responses=True
        )
    )
    record = layer.new_inprogress_record("s#k", "fp", 30, 60)
    with pytest.raises(IdempotencyConfigurationError):
        asyncio.run(layer._put_record_async(record))
    ran: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        ran.append(1)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = IdempotencyMiddleware(app, persistence_store=layer)
    sent: list[dict[str, Any]] = []

    async def main() -> None:
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/x",
            "query_string": b"",
            "headers": [(b"idempotency-key", b"k1")],
        }
        inbox = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive() -> dict[str, Any]:
            return inbox.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await middleware(scope, receive, send)

    asyncio.run(main())
    assert sent[0]["status"] == 503
    assert ran == []


# --- Item 7: a redis-py retry of a timed-out claim meets the claim's own record ------------------
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_item7_retried_claim_that_meets_its_own_record_is_won(
    redis_server: RedisProcess, redis_url: str, mode: str
) -> None:
    import redis.asyncio
    from redis.backoff import NoBackoff

    from tests.reliability.tcp_proxy import Delay, TcpProxy

    proxy = TcpProxy(redis_server.port)
    try:
        # redis-py's own retries on (its default for clients built from host/port in v6+).
        options = {"socket_timeout": 0.3, "socket_connect_timeout": 2}
        if mode == "sync":
            retry = redis.retry.Retry(NoBackoff(), 3)
            client: Any = redis.Redis(port=proxy.port, retry=retry, **options)
        else:
            retry = redis.asyncio.retry.Retry(NoBackoff(), 3)
            client = redis.asyncio.Redis(port=proxy.port, retry=retry, **options)
        layer = RedisPersistenceLayer(client=client)
        record = claim(layer, "s#item7")

        async def put_async() -> None:
            await client.ping()  # connected first: the delayed chunk is the claim's reply
            proxy.inject("down", Delay(0.8))
            await layer._put_record_async(record)

        if mode == "sync":
            client.ping()
            proxy.inject("down", Delay(0.8))  # the SET ... GET reply arrives after the timeout
            layer._put_record(record)
        else:
            asyncio.run(put_async())
        assert proxy.applied == 1
        stored = RedisPersistenceLayer(url=redis_url)._get_record("s#item7")
        assert stored.owner == record.owner
    finally:
        proxy.close()


def test_item7_clients_the_layer_builds_never_resend_commands(redis_url: str) -> None:
    url = redis_url + "?health_check_interval=30"  # an option only redis-py serves
    layer = RedisPersistenceLayer(url=url)
    connection = layer.sync_client().connection_pool.make_connection()
    assert connection.retry.get_retries() == 0

    async def async_retries() -> int:
        client = layer.async_client()
        return int(client.connection_pool.make_connection().retry.get_retries())

    assert asyncio.run(async_retries()) == 0


# --- Item 13: asyncio.run per job must not leak a loop, a connection and a socket each time -----
def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _live_loops() -> int:
    import gc

    gc.collect()
    # type(), not isinstance(): isinstance reads __class__, which a lazy object (Django's
    # admin.site, once the Django tests imported it) answers by setting itself up.
    return sum(issubclass(type(o), asyncio.AbstractEventLoop) for o in gc.get_objects())


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds in /proc/self/fd")
@pytest.mark.parametrize("client", ["lean", "redis-py"])
def test_item13_loops_and_sockets_stay_bounded_over_200_asyncio_runs(
    redis_url: str, client: str
) -> None:
    url = redis_url if client == "lean" else redis_url + "?health_check_interval=30"
    layer = RedisPersistenceLayer(url=url)

    async def job(index: int) -> None:
        await layer._put_record_async(claim(layer, f"s#item13-{index}"))

    asyncio.run(job(-1))
    fds, loops = _open_fds(), _live_loops()
    for index in range(200):
        asyncio.run(job(index))
    assert _open_fds() - fds < 10
    assert _live_loops() - loops < 5


def _unclosed_after(job: Any) -> list[str]:
    """Run ``job``, collect garbage, and return the ResourceWarnings raised meanwhile."""
    import gc
    import warnings

    gc.collect()  # earlier tests' garbage is theirs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        job()
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.mark.parametrize("pipelining", [True, False])
def test_asyncio_run_per_job_then_close_leaves_no_open_transport(
    redis_url: str, pipelining: bool
) -> None:
    # asyncio.run closes its loop without closing the transports on it; close() afterwards
    # must still release that loop's connection (3.13 reported it as an unclosed transport
    # when the garbage collector found it, in whatever test was running then).
    def job() -> None:
        store = RedisPersistenceLayer(url=redis_url, auto_pipeline=pipelining)

        async def one() -> None:
            with pytest.raises(IdempotencyItemNotFoundError):
                await store._get_record_async("absent")  # opens this loop's connection

        asyncio.run(one())
        store.close()

    assert _unclosed_after(job) == []


@pytest.mark.parametrize("pipelining", [True, False])
def test_aclose_closes_this_loops_connection_and_it_reconnects(
    redis_url: str, pipelining: bool
) -> None:
    def job() -> None:
        store = RedisPersistenceLayer(url=redis_url, auto_pipeline=pipelining)

        async def one() -> None:
            for _ in range(2):  # reconnects after aclose()
                with pytest.raises(IdempotencyItemNotFoundError):
                    await store._get_record_async("absent")
                await store.aclose()

        asyncio.run(one())

    assert _unclosed_after(job) == []
