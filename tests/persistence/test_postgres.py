"""PostgreSQL layer, on the suite's own server: round trips, races across processes, the
database clock, interruption mid-statement, purge, and completion in the business transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from idempotent_middleware import (
    IdempotencyAlreadyInProgressError,
    IdempotencyConfigurationError,
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyOutcomeUnknownError,
    IdempotencyOwnershipError,
    IdempotencyPersistenceLayerError,
    WSGIIdempotencyMiddleware,
    current_claim,
    idempotent_function,
)
from idempotent_middleware.asgi import IdempotencyMiddleware
from idempotent_middleware.config import IdempotencyConfig
from idempotent_middleware.persistence.base import STATUS_COMPLETED, STATUS_INPROGRESS
from idempotent_middleware.persistence.postgres import PostgresPersistenceLayer
from tests.faults.signals import Interrupted

pytestmark = pytest.mark.postgres

Interrupt = Callable[..., contextlib.AbstractContextManager[list[bool]]]


@pytest.fixture
def layer(postgres_dsn: str) -> Iterator[PostgresPersistenceLayer]:
    store = PostgresPersistenceLayer(dsn=postgres_dsn, max_size=1)
    yield store
    store.close()


@pytest.fixture
def orders(postgres_dsn: str) -> Iterator[str]:
    """A business table the handlers write to (one row per execution)."""
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, note text)")
        conn.execute("TRUNCATE orders")
    yield postgres_dsn


def order_count(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM orders").fetchone()
    assert row is not None
    return int(row[0])


# --- Round trips ----------------------------------------------------------------------------
def _statements(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT query, calls FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND query NOT ILIKE '%pg_stat_statements%'"
        ).fetchall()
    return {query: calls for query, calls in rows}


def test_one_round_trip_per_operation(layer: PostgresPersistenceLayer, postgres_dsn: str) -> None:
    """Each operation is one statement (autocommit: no BEGIN/COMMIT), counted by the server."""
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        if conn.execute("SHOW shared_preload_libraries").fetchone() != ("pg_stat_statements",):
            pytest.skip("pg_stat_statements is not available on this server")
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    with contextlib.suppress(IdempotencyItemNotFoundError):  # connecting is not an operation
        layer._get_record("rt#warm")
    record = layer.new_inprogress_record("rt#k", "fp", 30, 60)

    def count(operation: Callable[[], Any]) -> int:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")
        with contextlib.suppress(IdempotencyItemAlreadyExistsError, IdempotencyItemNotFoundError):
            operation()
        calls = _statements(postgres_dsn)
        assert not any(q.strip().upper() in ("BEGIN", "COMMIT") for q in calls), calls
        return sum(calls.values())

    other = layer.new_inprogress_record("rt#k", "fp", 30, 60)
    counts = {
        "claim": count(lambda: layer._put_record(record)),
        "claim lost (returns the live record)": count(lambda: layer._put_record(other)),
        "get": count(lambda: layer._get_record("rt#k")),
        "renew": count(lambda: layer._renew_lease(record)),
        "complete": count(lambda: layer._update_record(layer.completed_record(record, b"x", 60))),
        "replay (claim lost to a result)": count(lambda: layer._put_record(other)),
        "release": count(lambda: layer._delete_record(record)),
        "get missing": count(lambda: layer._get_record("rt#k")),
    }
    assert counts == dict.fromkeys(counts, 1)


# --- Races and the database clock -------------------------------------------------------------
def _claim_in_child(dsn: str, key: str, barrier: Any, results: Any) -> None:
    store = PostgresPersistenceLayer(dsn=dsn, max_size=1)
    with contextlib.suppress(IdempotencyItemNotFoundError):  # connected before the barrier
        store._get_record("warm")
    record = store.new_inprogress_record(key, "fp", 30, 60)
    barrier.wait()
    try:
        store._put_record(record)
        results.put(record.owner)
    except IdempotencyItemAlreadyExistsError:
        results.put(None)
    finally:
        store.close()


@pytest.mark.parametrize("round_", range(3))
def test_exactly_one_of_4_processes_wins(
    layer: PostgresPersistenceLayer, postgres_dsn: str, round_: int
) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    results = context.Queue()
    key = f"race#{round_}"
    children = [
        context.Process(target=_claim_in_child, args=(postgres_dsn, key, barrier, results))
        for _ in range(4)
    ]
    for child in children:
        child.start()
    owners = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(30)
    winners = [owner for owner in owners if owner is not None]
    assert len(winners) == 1
    assert layer._get_record(key).owner == winners[0]


def test_lease_is_judged_by_the_database_clock(
    layer: PostgresPersistenceLayer, postgres_dsn: str
) -> None:
    """Stored times are the database's: an app clock 1 h ahead neither expires a live claim
    nor keeps an expired one (the layer sends durations, not timestamps)."""
    record = layer.new_inprogress_record("clock#k", "fp", 30, 60)
    layer._put_record(record)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM lease_expires_at - statement_timestamp()),"
            " extract(epoch FROM expires_at - statement_timestamp())"
            " FROM idempotency_records WHERE idempotency_key = 'clock#k'"
        ).fetchone()
        assert row is not None
        assert 25 < float(row[0]) <= 30 and 55 < float(row[1]) <= 60
        # The database says the lease ran out: reclaimable, whatever the app clock says.
        conn.execute(
            "UPDATE idempotency_records SET lease_expires_at = statement_timestamp()"
            " - interval '1 second' WHERE idempotency_key = 'clock#k'"
        )
    with pytest.raises(IdempotencyItemNotFoundError):
        layer._get_record("clock#k")
    layer._put_record(layer.new_inprogress_record("clock#k", "fp", 30, 60))


def test_purge_expired_in_bounded_batches(
    layer: PostgresPersistenceLayer, postgres_dsn: str
) -> None:
    for i in range(25):
        layer._put_record(layer.new_inprogress_record(f"old#{i}", "fp", -1, 60))
    live = layer.new_inprogress_record("live#k", "fp", 30, 60)
    layer._put_record(live)
    assert layer.purge_expired(batch=10, max_batches=2) == 20
    assert layer.purge_expired(batch=10) == 5
    assert layer.purge_expired(batch=10) == 0
    assert layer._get_record("live#k").owner == live.owner


def test_create_schema_is_idempotent_and_takes_a_schema(postgres_dsn: str) -> None:
    store = PostgresPersistenceLayer(
        dsn=postgres_dsn, schema='odd "schema"', table="Records; DROP TABLE x"
    )
    try:
        store.create_schema()
        store.create_schema()
        record = store.new_inprogress_record("s#k", "fp", 30, 60)
        store._put_record(record)
        assert store._get_record("s#k").owner == record.owner
    finally:
        store.close()


# --- Interruption mid-statement ----------------------------------------------------------------
@contextlib.contextmanager
def row_locked(dsn: str, key: str) -> Iterator[None]:
    """Hold the row of ``key`` locked from another connection: statements on it wait."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "SELECT 1 FROM idempotency_records WHERE idempotency_key = %s FOR UPDATE", (key,)
        )
        yield
        conn.rollback()


def _backend_pid(layer: PostgresPersistenceLayer) -> int:
    """The server process of the layer's one idle connection (``max_size=1``)."""
    with contextlib.suppress(IdempotencyItemNotFoundError):
        layer._get_record("pid#probe")
    (conn,) = layer._connections.idle
    return int(conn.info.backend_pid)


@pytest.mark.parametrize("raised", [KeyboardInterrupt, Interrupted])
def test_connection_interrupted_mid_statement_is_discarded(
    layer: PostgresPersistenceLayer,
    postgres_dsn: str,
    signal_interrupt: Interrupt,
    raised: type[BaseException],
) -> None:
    first = layer.new_inprogress_record("sig#k", "fp", 30, 60)
    layer._put_record(first)
    before = _backend_pid(layer)
    (interrupted,) = layer._connections.idle
    with row_locked(postgres_dsn, "sig#k"):
        expected = (IdempotencyOwnershipError, raised, Exception)
        with signal_interrupt(0.2, raised) as fired, pytest.raises(expected):
            layer._update_record(layer.completed_record(first, b"late", 60))
        assert fired[0]
    # The interrupted connection is closed, not reused nor leaked open; the next caller gets
    # a new one and its own, correct answer.
    assert interrupted.closed
    assert _backend_pid(layer) != before
    with pytest.raises(IdempotencyItemNotFoundError):
        layer._get_record("sig#other")
    stored = layer._get_record("sig#k")
    assert stored.owner == first.owner


def test_cancelled_async_statement_drops_its_connection(
    layer: PostgresPersistenceLayer, postgres_dsn: str
) -> None:
    first = layer.new_inprogress_record("cancel#k", "fp", 30, 60)
    layer._put_record(first)

    async def main() -> tuple[int, int]:
        await layer._get_record_async("cancel#k")
        interrupted = layer._async_connections.idle[-1]
        before = interrupted.info.backend_pid
        locked = threading.Event()
        release = threading.Event()

        def hold() -> None:
            with row_locked(postgres_dsn, "cancel#k"):
                locked.set()
                release.wait(10)

        holder = threading.Thread(target=hold)
        holder.start()
        locked.wait(10)
        task = asyncio.ensure_future(
            layer._update_record_async(layer.completed_record(first, b"late", 60))
        )
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        holder.join(10)
        assert interrupted.closed  # dropped and closed, never handed to the next caller
        record = await layer._get_record_async("cancel#k")
        assert record.owner == first.owner
        return before, layer._async_connections.idle[-1].info.backend_pid

    before, after = asyncio.run(main())
    assert before != after


# --- Completion inside the business transaction ----------------------------------------------
def _wsgi_app(dsn: str, *, then: str) -> Callable[..., Any]:
    """A handler that inserts an order and records its execution in the same transaction,
    then commits and dies (``then="die"``) or rolls back by raising (``then="raise"``)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        claim = current_claim()
        assert claim is not None
        with psycopg.connect(dsn) as conn:
            with conn.transaction():
                conn.execute("INSERT INTO orders (note) VALUES (%s)", (then,))
                claim.record_executed(conn)
                if then == "raise":
                    raise RuntimeError("business failure: rolled back")
            if then == "die":
                os.kill(os.getpid(), signal.SIGKILL)  # committed, response never stored
        start_response("201 Created", [("content-type", "application/json")])
        return [b'{"ok": true}']

    return app


def _post(app: Callable[..., Any], key: str) -> Any:
    from werkzeug.test import Client

    return Client(app).post(
        "/orders", json={"sku": "a"}, headers={"Idempotency-Key": key}, buffered=True
    )


def _serve_once(dsn: str, then: str, key: str) -> None:
    store = PostgresPersistenceLayer(dsn=dsn)
    app = WSGIIdempotencyMiddleware(_wsgi_app(dsn, then=then), persistence_store=store)
    with contextlib.suppress(Exception):
        _post(app, key)


def _run_child(target: Callable[..., None], *args: Any) -> int:
    child = multiprocessing.get_context("spawn").Process(target=target, args=args)
    child.start()
    child.join(60)
    assert child.exitcode is not None
    return child.exitcode


def test_killed_after_business_commit_never_runs_again(orders: str) -> None:
    assert _run_child(_serve_once, orders, "die", "tx-die") == -signal.SIGKILL
    assert order_count(orders) == 1
    store = PostgresPersistenceLayer(dsn=orders)
    app = WSGIIdempotencyMiddleware(_wsgi_app(orders, then="ok"), persistence_store=store)
    try:
        for _ in range(3):
            reply = _post(app, "tx-die")
            assert reply.status_code == 409
            assert reply.json["type"].endswith("/idempotency-response-not-replayable")
    finally:
        store.close()
    assert order_count(orders) == 1


def test_business_rollback_releases_and_the_retry_runs_once(orders: str) -> None:
    assert _run_child(_serve_once, orders, "raise", "tx-raise") == 0
    assert order_count(orders) == 0
    store = PostgresPersistenceLayer(dsn=orders)
    app = WSGIIdempotencyMiddleware(_wsgi_app(orders, then="ok"), persistence_store=store)
    try:
        first = _post(app, "tx-raise")
        assert first.status_code == 201
        again = _post(app, "tx-raise")
        assert again.status_code == 201
        assert again.headers["idempotent-replayed"] == "true"
    finally:
        store.close()
    assert order_count(orders) == 1


def test_handler_error_after_its_commit_keeps_the_key(orders: str) -> None:
    """Committed, then raised: the release must not free the key the business committed."""
    store = PostgresPersistenceLayer(dsn=orders)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        claim = current_claim()
        assert claim is not None
        with psycopg.connect(orders) as conn:
            conn.execute("INSERT INTO orders (note) VALUES ('x')")
            claim.record_executed(conn)
        raise RuntimeError("failed after the commit")

    wrapped = WSGIIdempotencyMiddleware(app, persistence_store=store)
    try:
        with pytest.raises(RuntimeError):
            _post(wrapped, "tx-late-error")
        reply = _post(wrapped, "tx-late-error")
        assert reply.status_code == 409
    finally:
        store.close()
    assert order_count(orders) == 1


def _call_function_once(dsn: str, then: str) -> None:
    store = PostgresPersistenceLayer(dsn=dsn)

    @idempotent_function(data_keyword_argument="order", persistence_store=store)
    def place(order: dict[str, Any]) -> dict[str, Any]:
        claim = current_claim()
        assert claim is not None
        with psycopg.connect(dsn) as conn:
            conn.execute("INSERT INTO orders (note) VALUES ('f')")
            claim.record_executed(conn)
        if then == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        return {"placed": order["id"]}

    place(order={"id": 1})


def test_idempotent_function_killed_after_commit_never_runs_again(orders: str) -> None:
    assert _run_child(_call_function_once, orders, "die") == -signal.SIGKILL
    with pytest.raises(IdempotencyOutcomeUnknownError):
        _call_function_once(orders, "ok")
    assert order_count(orders) == 1


def test_record_executed_async_and_completion_replaces_the_marker(orders: str) -> None:
    store = PostgresPersistenceLayer(dsn=orders)

    @idempotent_function(data_keyword_argument="order", persistence_store=store)
    async def place(order: dict[str, Any]) -> int:
        claim = current_claim()
        assert claim is not None
        seen.append(claim)
        async with await psycopg.AsyncConnection.connect(orders) as conn:
            await conn.execute("INSERT INTO orders (note) VALUES ('a')")
            await claim.record_executed_async(conn)
        return 7

    async def main() -> list[int]:
        return [await place(order={"id": 2}) for _ in range(3)]

    seen: list[Any] = []
    try:
        assert asyncio.run(main()) == [7, 7, 7]
        assert len(seen) == 1
        assert not seen[0].active  # ended by the completion
        (key,) = [k for k in _keys(orders)]
        stored = store._get_record(key)
        assert stored.status == STATUS_COMPLETED
        assert stored.response_data == b"7"
    finally:
        store.close()
    assert order_count(orders) == 1


def _keys(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT idempotency_key FROM idempotency_records")]


def test_record_executed_refuses_a_lost_claim(layer: PostgresPersistenceLayer, orders: str) -> None:
    """Fenced: once another execution owns the key, the marker fails and the business rolls
    back with it."""
    stale = layer.new_inprogress_record("lost#k", "fp", -1, 60)
    layer._put_record(stale)
    newer = layer.new_inprogress_record("lost#k", "fp", 30, 60)
    layer._put_record(newer)
    with (
        psycopg.connect(orders) as conn,
        pytest.raises(IdempotencyOwnershipError),
        conn.transaction(),
    ):
        conn.execute("INSERT INTO orders (note) VALUES ('stale')")
        layer.record_executed(conn, stale, 60)
    assert order_count(orders) == 0
    assert layer._get_record("lost#k").status == STATUS_INPROGRESS


def test_current_claim_outside_a_handler_is_none() -> None:
    # A fresh context: tests that drive the core's claim directly leave theirs bound here.
    assert contextvars.Context().run(current_claim) is None


def test_layer_on_a_callers_pools(postgres_dsn: str) -> None:
    """``pool=`` and ``async_pool=``: psycopg_pool pools the application already has."""
    import psycopg_pool

    pool = psycopg_pool.ConnectionPool(postgres_dsn, min_size=1, max_size=2, open=True)
    try:
        store = PostgresPersistenceLayer(pool=pool)
        record = store.new_inprogress_record("pool#k", "fp", 30, 60)
        store._put_record(record)
        store._update_record(store.completed_record(record, b"done", 60))

        async def main() -> bytes | None:
            async_pool = psycopg_pool.AsyncConnectionPool(
                postgres_dsn, min_size=1, max_size=2, open=False
            )
            await async_pool.open()
            try:
                both = PostgresPersistenceLayer(pool=pool, async_pool=async_pool)
                return (await both._get_record_async("pool#k")).response_data
            finally:
                await async_pool.close()

        assert asyncio.run(main()) == b"done"
        # Connections given back as they were lent: not in a transaction, autocommit restored.
        with pool.connection() as conn:
            assert conn.autocommit is False
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        pool.close()


def test_forked_child_opens_its_own_connections(
    layer: PostgresPersistenceLayer, postgres_dsn: str
) -> None:
    """``gunicorn --preload``: the child must not use (nor close) the parent's socket."""
    first = layer.new_inprogress_record("fork#parent", "fp", 30, 60)
    layer._put_record(first)
    parent_pid = _backend_pid(layer)
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            record = layer.new_inprogress_record("fork#child", "fp", 30, 60)
            layer._put_record(record)
            (conn,) = layer._connections.idle
            code = 0 if conn.info.backend_pid != parent_pid else 2
            layer.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _backend_pid(layer) == parent_pid  # the parent's connection still works
    assert layer._get_record("fork#child").status == STATUS_INPROGRESS


def test_a_status_assigned_later_is_refused_typed(layer: PostgresPersistenceLayer) -> None:
    from idempotent_middleware import DataRecord, IdempotencyInvalidStatusError

    record = DataRecord("status#k", STATUS_COMPLETED, 1.0e10, None, b"x", "", b"o" * 16)
    record.status = "EXPIRED"
    for write in (layer._put_record, layer._update_record, layer._renew_lease):
        with pytest.raises(IdempotencyInvalidStatusError):
            write(record)
    with pytest.raises(IdempotencyItemNotFoundError):
        layer._get_record("status#k")


# --- Review findings: lock waits, NUL in keys, record_executed misuse -------------------------
@pytest.fixture
def wide_layer(postgres_dsn: str) -> Iterator[PostgresPersistenceLayer]:
    """A layer with room for concurrent claimers (the ``layer`` fixture has one connection)."""
    store = PostgresPersistenceLayer(dsn=postgres_dsn)
    yield store
    store.close()


def test_a_claim_that_waited_on_a_lock_is_not_born_expired(
    wide_layer: PostgresPersistenceLayer, postgres_dsn: str
) -> None:
    """Two claimers queue behind a business transaction holding the marker's row lock, each
    longer than the lease; after the rollback exactly one of them wins. The lease written
    after the wait must start after the wait, not at the statement's start."""
    layer = wide_layer
    key = "POST /pay#wait"
    owner = layer.new_inprogress_record(key, "h", 1.0, 3600)
    layer._put_record(owner)
    business = psycopg.connect(postgres_dsn)
    business.execute(layer._sql["executed"], layer._executed_params(owner, 3600))
    time.sleep(1.2)  # the owner's lease lapses (its renewal would wait on the same lock)
    won: list[str] = []

    def claim(name: str) -> None:
        with contextlib.suppress(IdempotencyItemAlreadyExistsError):
            layer._put_record(layer.new_inprogress_record(key, "h", 2.0, 3600))
            won.append(name)

    first = threading.Thread(target=claim, args=("first",))
    first.start()
    time.sleep(2.3)  # a retry more than one lease later queues on the lock as well
    second = threading.Thread(target=claim, args=("second",))
    second.start()
    time.sleep(0.5)
    business.rollback()  # the handler failed after record_executed
    business.close()
    first.join()
    second.join()
    assert len(won) == 1, f"claimers that won the same key: {won}"


def test_a_fresh_insert_that_waited_past_its_lease_is_refused(
    wide_layer: PostgresPersistenceLayer, postgres_dsn: str
) -> None:
    """A fresh row's values are computed before the insert waits on a competing uncommitted
    insert of the same key; after a wait longer than the lease the row would be born
    expired (reclaimable while the handler runs). Refused, and nothing runs under it."""
    layer = wide_layer
    outcome: list[BaseException | None] = []
    with psycopg.connect(postgres_dsn) as competing:
        competing.execute(
            "INSERT INTO idempotency_records (idempotency_key, status, owner, payload_hash,"
            " expires_at) VALUES ('insert#wait', 'INPROGRESS', '\\x00', 'h', now())"
        )

        def claim() -> None:
            try:
                layer._put_record(layer.new_inprogress_record("insert#wait", "h", 0.5, 60))
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=claim)
        waiter.start()
        time.sleep(1.0)  # longer than the lease
        competing.rollback()
        waiter.join()
    (error,) = outcome
    assert isinstance(error, IdempotencyPersistenceLayerError), error
    assert "waited past its lease" in str(error)
    layer._put_record(layer.new_inprogress_record("insert#wait", "h", 30, 60))  # free again


def test_a_lock_held_past_lock_timeout_is_a_typed_error(postgres_dsn: str) -> None:
    """The layer's statements wait at most ``lock_timeout`` for a row someone's transaction
    holds, never for the length of that transaction: a renewal gets a store error, a claim
    "in progress" (the key is held by a live transaction; not an outage)."""
    store = PostgresPersistenceLayer(dsn=postgres_dsn, lock_timeout=0.2)
    try:
        record = store.new_inprogress_record("locked#k", "h", 30, 60)
        store._put_record(record)
        other = store.new_inprogress_record("locked#k", "h", 30, 60)
        with row_locked(postgres_dsn, "locked#k"):
            with pytest.raises(IdempotencyPersistenceLayerError, match="LockNotAvailable"):
                store._renew_lease(record)
            with pytest.raises(IdempotencyAlreadyInProgressError, match="lock_timeout"):
                store._put_record(other)
            with pytest.raises(IdempotencyAlreadyInProgressError, match="lock_timeout"):
                asyncio.run(store._put_record_async(other))
        store._renew_lease(record)  # the connection is usable again
    finally:
        store.close()


def test_a_locked_record_is_in_progress_even_with_fail_open(postgres_dsn: str) -> None:
    """A handler's transaction holds its marker's row lock: a retry meanwhile gets 409 in
    progress after lock_timeout. Were it a store outage, fail_open would run it again."""
    store = PostgresPersistenceLayer(dsn=postgres_dsn, lock_timeout=0.2)
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        runs.append(1)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = IdempotencyMiddleware(
        app, persistence_store=store, config=IdempotencyConfig(fail_open=True)
    )
    key = "POST /held#" + hashlib.sha256(b"held-1").hexdigest()
    owner = store.new_inprogress_record(key, "h", 30, 60)
    store._put_record(owner)
    try:
        with psycopg.connect(postgres_dsn) as business:
            store.record_executed(business, owner, 60)
            status = _asgi_post(middleware, "/held", "held-1")
            business.rollback()
    finally:
        store.close()
    assert (status, runs) == (409, [])


def test_record_executed_twice_is_not_an_ownership_loss(
    layer: PostgresPersistenceLayer, postgres_dsn: str
) -> None:
    """The live owner may record its execution again (same or a later transaction)."""
    record = layer.new_inprogress_record("twice#k", "h", 30, 60)
    layer._put_record(record)
    with psycopg.connect(postgres_dsn) as conn:
        layer.record_executed(conn, record, 60)
        layer.record_executed(conn, record, 60)
        conn.commit()
        layer.record_executed(conn, record, 60)  # a second transaction of the same handler
        conn.commit()
    assert layer._get_record("twice#k").status == STATUS_COMPLETED


def test_record_executed_refuses_an_autocommit_connection(
    layer: PostgresPersistenceLayer, postgres_dsn: str
) -> None:
    """On an autocommit connection the marker would commit alone, before the business writes;
    refused, sync and async, and nothing is written."""
    record = layer.new_inprogress_record("autocommit#k", "h", 30, 60)
    layer._put_record(record)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        with pytest.raises(IdempotencyConfigurationError, match="transaction"):
            layer.record_executed(conn, record, 60)
        with conn.transaction(force_rollback=True):  # an explicit transaction is fine
            layer.record_executed(conn, record, 60)

    async def on_async() -> None:
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as conn:
            await layer.record_executed_async(conn, record, 60)

    with pytest.raises(IdempotencyConfigurationError, match="transaction"):
        asyncio.run(on_async())
    assert layer._get_record("autocommit#k").status == STATUS_INPROGRESS


def test_record_executed_on_another_database_is_typed(
    layer: PostgresPersistenceLayer, postgres_dsn: str
) -> None:
    """The table missing on the caller's connection (another database, another search_path):
    a typed configuration error, not psycopg's UndefinedTable."""
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS idem_other")
        conn.execute("CREATE DATABASE idem_other")
    record = layer.new_inprogress_record("otherdb#k", "h", 30, 60)
    layer._put_record(record)
    other = postgres_dsn.replace("dbname=postgres", "dbname=idem_other")
    assert other != postgres_dsn
    with psycopg.connect(other) as conn, pytest.raises(IdempotencyConfigurationError):
        layer.record_executed(conn, record, 60)


def test_renewal_over_the_own_committed_marker_is_not_a_lost_lease(
    orders: str, caplog: pytest.LogCaptureFixture
) -> None:
    """After the handler's transaction commits the marker, the lease's next renewal finds
    the owner's own marker: still held, no "lease lost" warning."""
    store = PostgresPersistenceLayer(dsn=orders)
    calls: list[int] = []

    @idempotent_function(
        persistence_store=store,
        data_keyword_argument="order",
        config=IdempotencyConfig(lease_seconds=0.4),
    )
    def place(order: dict[str, Any]) -> str:
        claim = current_claim()
        assert claim is not None
        with psycopg.connect(orders) as conn:
            conn.execute("INSERT INTO orders (note) VALUES ('x')")
            claim.record_executed(conn)
        calls.append(1)
        time.sleep(1.0)  # several renewals over the committed marker
        return "done"

    try:
        with caplog.at_level(logging.WARNING, logger="idempotent_middleware"):
            assert place(order={"id": 1}) == "done"
    finally:
        store.close()
    assert calls == [1]
    assert not [r for r in caplog.records if "lease lost" in r.getMessage()], caplog.text


def _asgi_post(app: Any, path: str, key: str) -> int:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("latin-1", "replace"),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"idempotency-key", key.encode()),
            (b"content-type", b"application/json"),
            (b"content-length", b"2"),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    return int(next(m for m in sent if m["type"] == "http.response.start")["status"])


@pytest.mark.parametrize("fail_open", [False, True])
def test_nul_in_the_path_is_not_a_store_outage(
    layer: PostgresPersistenceLayer, fail_open: bool
) -> None:
    """ASGI paths are percent-decoded: ``POST /orders/%00`` has a NUL, which PostgreSQL text
    refuses. It must not read as a store outage (503, or with fail_open a run per retry)."""
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        runs.append(1)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = IdempotencyMiddleware(
        app, persistence_store=layer, config=IdempotencyConfig(fail_open=fail_open)
    )
    statuses = [_asgi_post(middleware, "/orders/\x00", "nul-1") for _ in range(2)]
    assert statuses == [201, 201] and runs == [1], (statuses, runs)
