"""``ping()`` is for readiness probes: it must answer (or raise) in bounded time even when
the store stops answering on a connection that is already open.

A TCP relay between the layer and the real server is frozen mid-life (a network partition
without resets, a server stuck in I/O): bytes are accepted and never answered.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from typing import Any

import pytest

from idempotent_middleware.exceptions import IdempotencyPersistenceLayerError

pytestmark = pytest.mark.timeout(90)

#: Far above the layer's own timeouts (5 s connect/acquire, 5 s lock_timeout).
BOUND = 25.0


class Relay:
    """Forwards loopback TCP to ``target``; ``freeze()`` stops forwarding both ways."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.frozen = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            if self.frozen.is_set():
                self.frozen.wait()  # swallowed: never forwarded
                continue
            try:
                sink.sendall(data)
            except OSError:
                return

    def freeze(self) -> None:
        self.frozen.set()

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()


def _through(dsn: str, relay: Relay) -> str:
    dsn = re.sub(r"host=\S+", "host=127.0.0.1", dsn)
    return re.sub(r"port=\d+", f"port={relay.port}", dsn)


def _finishes(call: Any, raised: list[BaseException] | None = None) -> bool:
    """Whether ``call()`` returns or raises within BOUND seconds (what it raised: ``raised``)."""
    done = threading.Event()

    def run() -> None:
        try:
            call()
        except Exception as exc:
            if raised is not None:
                raised.append(exc)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(BOUND)


@pytest.fixture
def relay(postgres_dsn: str) -> Any:
    host = re.search(r"host=(\S+)", postgres_dsn)
    port = re.search(r"port=(\d+)", postgres_dsn)
    assert port is not None
    target = "127.0.0.1" if host is None or host.group(1).startswith("/") else host.group(1)
    relayed = Relay(target, int(port.group(1)))
    yield relayed
    relayed.close()


def test_postgres_ping_on_a_stalled_connection_is_bounded(postgres_dsn: str, relay: Relay) -> None:
    from idempotent_middleware.persistence.postgres import PostgresPersistenceLayer

    layer = PostgresPersistenceLayer(dsn=_through(postgres_dsn, relay))
    layer.ping()  # the connection is open and idle in the layer's pool
    relay.freeze()
    raised: list[BaseException] = []
    assert _finishes(layer.ping, raised), f"ping() still blocked after {BOUND}s on a stalled server"
    assert [type(e) for e in raised] == [IdempotencyPersistenceLayerError], raised


def test_postgres_ping_async_on_a_stalled_connection_is_bounded(
    postgres_dsn: str, relay: Relay
) -> None:
    from idempotent_middleware.persistence.postgres import PostgresPersistenceLayer

    layer = PostgresPersistenceLayer(dsn=_through(postgres_dsn, relay))

    async def twice() -> None:
        await layer.ping_async()
        relay.freeze()
        await layer.ping_async()

    raised: list[BaseException] = []
    assert _finishes(lambda: asyncio.run(twice()), raised), (
        f"ping_async() still blocked after {BOUND}s on a stalled server"
    )
    assert [type(e) for e in raised] == [IdempotencyPersistenceLayerError], raised


def test_redis_ping_on_a_stalled_connection_is_bounded_control(redis_server: Any) -> None:
    """Control: the same frozen relay in front of Redis; its socket timeout bounds ping()."""
    from idempotent_middleware.persistence.redis import RedisPersistenceLayer

    relayed = Relay("127.0.0.1", redis_server.port)
    try:
        layer = RedisPersistenceLayer(f"redis://127.0.0.1:{relayed.port}/0")
        layer.ping()
        relayed.freeze()
        assert _finishes(layer.ping)
    finally:
        relayed.close()


def test_postgres_connections_carry_tcp_timeouts(postgres_dsn: str, relay: Relay) -> None:
    """A server gone without a reset fails a statement on an open connection within about
    25 s (keepalives, tcp_user_timeout); a DSN's own setting wins."""
    from idempotent_middleware.persistence.postgres import PostgresPersistenceLayer

    dsn = _through(postgres_dsn, relay)
    layer = PostgresPersistenceLayer(dsn=f"{dsn} keepalives_idle=42")
    with layer._connection() as conn:
        options = {o.keyword: o.val for o in conn.pgconn.info}
    layer.close()
    assert options[b"keepalives"] == b"1"
    assert options[b"keepalives_idle"] == b"42"
    assert options[b"tcp_user_timeout"] == b"25000"
