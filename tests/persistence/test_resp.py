"""The lean RESP connections (``persistence/_resp.py``) under interruptions and broken peers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import redis

from idempotent_middleware.persistence._resp import BlockingConnection
from tests.faults.signals import Interrupted

Interrupt = Callable[..., contextlib.AbstractContextManager[list[bool]]]


def pause_server(url: str, milliseconds: int) -> None:
    """Make Redis hold every client's reply for a while (from another connection)."""
    with redis.Redis.from_url(url) as admin:
        admin.execute_command("CLIENT", "PAUSE", milliseconds, "ALL")


class _Stop(BaseException):
    """A BaseException that is not an Exception (like gevent's Timeout)."""


@pytest.mark.parametrize("raised", [Interrupted, KeyboardInterrupt, _Stop])
def test_item1_interrupted_command_never_desyncs_the_next_one(
    redis_url: str, signal_interrupt: Interrupt, raised: type[BaseException]
) -> None:
    connection = BlockingConnection(redis_url, socket_timeout=5, socket_connect_timeout=5)
    assert connection.execute(("SET", "item1:a", "value-a")) == b"OK"
    assert connection.execute(("SET", "item1:b", "value-b")) == b"OK"
    pause_server(redis_url, 400)
    with signal_interrupt(0.1, raised) as fired, pytest.raises(raised):
        connection.execute(("GET", "item1:a"))  # the reply arrives after the interruption
    assert fired[0]
    # The unread reply of GET a must not be taken as the reply of GET b.
    assert connection.execute(("GET", "item1:b")) == b"value-b"
    assert connection.execute(("GET", "item1:a")) == b"value-a"


def test_item1_interrupted_handshake_closes_the_socket(
    signal_interrupt: Interrupt,
) -> None:
    """AUTH waits for its reply when the interruption lands: the next command reconnects."""
    from tests.redis_servers import start_redis

    server = start_redis(password="item1-secret")
    try:
        connection = BlockingConnection(server.url, socket_timeout=5, socket_connect_timeout=5)
        connection.execute(("SET", "item1:h", "value-h"))
        connection.close()
        with redis.Redis.from_url(server.url) as admin:
            admin.execute_command("CLIENT", "PAUSE", 400, "ALL")
        with signal_interrupt(0.1) as fired, pytest.raises(Interrupted):
            connection.execute(("GET", "item1:h"))  # interrupted inside the AUTH round trip
        assert fired[0]
        assert getattr(connection._local, "state", None) is None
        assert connection.execute(("SET", "item1:h2", "value-h2")) == b"OK"
        assert connection.execute(("GET", "item1:h")) == b"value-h"
    finally:
        server.stop()


def test_item1_socket_errors_are_still_wrapped(redis_url: str) -> None:
    connection = BlockingConnection(redis_url, socket_timeout=0.2, socket_connect_timeout=5)
    connection.execute(("PING",))
    pause_server(redis_url, 600)
    with pytest.raises(redis.exceptions.TimeoutError):
        connection.execute(("GET", "item1:x"))
    assert getattr(connection._local, "state", None) is None


# --- Item 8: a closing transport must not hand the new connection's replies to old callers ------
def test_item8_reconnect_while_old_callers_wait_never_crosses_replies(redis_url: str) -> None:
    import asyncio

    from idempotent_middleware.persistence._resp import PipelinedConnection

    async def main() -> tuple[BaseException | bytes, BaseException | bytes]:
        loop = asyncio.get_running_loop()
        connection = PipelinedConnection(
            redis_url, loop, socket_timeout=5, socket_connect_timeout=5
        )
        await connection.execute(("SET", "item8:a", "value-a"))
        await connection.execute(("SET", "item8:b", "value-b"))
        pause_server(redis_url, 300)  # GET a waits for its reply on the old connection
        old = loop.create_task(_result(connection.execute(("GET", "item8:a"))))
        await asyncio.sleep(0)  # let the tick's flush send GET a
        await asyncio.sleep(0)
        assert connection.protocol is not None and connection.protocol.transport is not None
        # A peer's FIN during a write: the transport is closing, connection_lost has not run.
        connection.protocol.transport.is_closing = lambda: True  # type: ignore[method-assign]
        new = await _result(connection.execute(("GET", "item8:b")))
        try:
            return await old, new
        finally:
            connection.close()

    old, new = asyncio.run(main())
    assert new == b"value-b"
    assert old == b"value-a" or isinstance(old, redis.exceptions.ConnectionError)


async def _result(awaitable: object) -> BaseException | bytes:
    try:
        return await awaitable  # type: ignore[misc,no-any-return]
    except Exception as exc:
        return exc


def test_layer_close_closes_every_threads_socket(redis_url: str) -> None:
    """The lease renewer's thread and finished WSGI threads each kept a socket that nothing
    closed: collected later, each was an "unclosed socket" (a ResourceWarning)."""
    import gc
    import threading
    import warnings

    from idempotent_middleware import RedisPersistenceLayer
    from idempotent_middleware.persistence.base import BasePersistenceLayer

    layer = RedisPersistenceLayer(url=redis_url)
    claim = BasePersistenceLayer.new_inprogress_record("close#k", "fp", 30, 60)
    gc.collect()  # what earlier tests left behind is theirs, not this layer's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        worker = threading.Thread(target=layer._put_record, args=(claim,))
        worker.start()
        worker.join()
        del worker
        layer._get_record("close#k")  # this thread's own socket
        layer.close()
        gc.collect()
    assert not [w for w in caught if "unclosed" in str(w.message)]
    assert layer._get_record("close#k").owner == claim.owner  # reconnects after close()
    layer.close()


def test_a_command_that_cannot_be_packed_fails_alone_and_the_stream_stays_in_step(
    redis_url: str,
) -> None:
    """An argument RESP cannot carry (a float) fails its own caller; the commands sent in the
    same tick, and those after, still get their own replies (nothing was half queued)."""
    import asyncio

    from idempotent_middleware.persistence._resp import PipelinedConnection

    async def main() -> list[BaseException | bytes]:
        loop = asyncio.get_running_loop()
        connection = PipelinedConnection(
            redis_url, loop, socket_timeout=5, socket_connect_timeout=5
        )
        try:
            await connection.execute(("PING",))  # connected: the next tick flushes at once
            bad = _result(connection.execute(("GET", 1.5)))
            good = _result(connection.execute(("SET", "unpackable:a", "value-a")))
            batch = asyncio.gather(bad, good)
            await asyncio.sleep(0)
            after = await _result(connection.execute(("GET", "unpackable:a")))
            return [*await batch, after]
        finally:
            connection.close()

    bad, good, after = asyncio.run(main())
    assert isinstance(bad, TypeError)
    assert good == b"OK"
    assert after == b"value-a"
