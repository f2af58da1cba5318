"""What only the SQLite layer has to prove: one file shared by threads, processes and forks;
statements per operation; interruptions and cancellations that leave no transaction open and
no claim ambiguous; purging in bounded batches. The contract itself runs in ``test_layers``."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from idempotent_middleware import (
    IdempotencyCorruptRecordError,
    IdempotencyInvalidStatusError,
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyOwnershipError,
    IdempotencyPersistenceLayerError,
    SQLitePersistenceLayer,
)
from idempotent_middleware.persistence.record import STATUS_INPROGRESS, DataRecord
from tests.faults.signals import Interrupted

KEY = "scope#one"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "idem.sqlite3"


@pytest.fixture
def layer(db: Path) -> Iterator[SQLitePersistenceLayer]:
    store = SQLitePersistenceLayer(db)
    yield store
    store.close()


def new_claim(layer: SQLitePersistenceLayer, key: str = KEY, lease: float = 30.0) -> DataRecord:
    return layer.new_inprogress_record(key, "fp", lease, 60)


@contextlib.contextmanager
def write_lock_held(db: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holds the database's write lock until the block ends."""
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield other
    finally:
        if other.in_transaction:
            other.rollback()
        other.close()


def entered(layer: SQLitePersistenceLayer, name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An event set once a worker thread has started the layer's ``name`` operation."""
    started = threading.Event()
    original = getattr(layer, name)

    def wrapper(record: DataRecord) -> None:
        started.set()
        original(record)

    monkeypatch.setattr(layer, name, wrapper)
    return started


def lock_is_free(db: Path) -> bool:
    probe = sqlite3.connect(db, isolation_level=None, timeout=0)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.rollback()
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()


# --- Setup -----------------------------------------------------------------------------------
def test_file_is_in_wal_mode_and_schema_creation_is_idempotent(db: Path) -> None:
    first = SQLitePersistenceLayer(db, table="custom_records")
    first._put_record(new_claim(first))
    second = SQLitePersistenceLayer(db, table="custom_records")  # the table exists already
    with pytest.raises(IdempotencyItemAlreadyExistsError):
        second._put_record(new_claim(second))
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
    assert {"custom_records", "custom_records_live_until"} <= tables
    raw.close()
    first.close()
    second.close()


@pytest.mark.parametrize("path", ["", ":memory:", "file::memory:?cache=shared"])
def test_a_database_in_memory_is_refused(path: str) -> None:
    with pytest.raises(ValueError):
        SQLitePersistenceLayer(path)


@pytest.mark.parametrize("table", ["bad name", 'x"; DROP TABLE y; --', "1abc", ""])
def test_table_name_must_be_an_identifier(db: Path, table: str) -> None:
    with pytest.raises(ValueError):
        SQLitePersistenceLayer(db, table=table)


def test_unopenable_file_is_a_typed_error(tmp_path: Path) -> None:
    store = SQLitePersistenceLayer(tmp_path / "missing-dir" / "x.sqlite3")
    with pytest.raises(IdempotencyPersistenceLayerError):
        store._put_record(new_claim(store))


# --- Statements per operation ----------------------------------------------------------------
def test_statements_per_operation(layer: SQLitePersistenceLayer) -> None:
    """claim 1 (lost claim 2: the read of the winner), complete 1, renew 1, release 1
    (refused release 2), lookup 1."""
    conn = layer._connection()
    statements: list[str] = []
    conn.set_trace_callback(statements.append)

    def count(operation: Callable[[], Any]) -> int:
        statements.clear()
        with contextlib.suppress(IdempotencyItemAlreadyExistsError, IdempotencyOwnershipError):
            operation()
        return len(statements)

    claim = new_claim(layer)
    assert count(lambda: layer._put_record(claim)) == 1
    assert count(lambda: layer._put_record(new_claim(layer))) == 2
    assert count(lambda: layer._get_record(KEY)) == 1
    assert count(lambda: layer._renew_lease(claim)) == 1
    stranger = replace(claim, owner=b"s" * 16)
    assert count(lambda: layer._delete_record(stranger)) == 2
    assert count(lambda: layer._update_record(layer.completed_record(claim, b"r", 60))) == 1
    assert count(lambda: layer._delete_record(claim)) == 1
    conn.set_trace_callback(None)


# --- Races -----------------------------------------------------------------------------------
def test_50_threads_with_their_own_layers_one_key_one_winner(db: Path) -> None:
    layers = [SQLitePersistenceLayer(db) for _ in range(50)]
    winners: list[DataRecord] = []
    seen: list[bytes] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(50)

    def contend(store: SQLitePersistenceLayer) -> None:
        record = new_claim(store)
        barrier.wait()
        try:
            store._put_record(record)
            winners.append(record)
        except IdempotencyItemAlreadyExistsError as exc:
            if exc.old_data_record is not None:
                seen.append(exc.old_data_record.owner)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=contend, args=(store,)) for store in layers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(winners) == 1
    assert set(seen) <= {winners[0].owner}
    assert layers[1]._get_record(KEY).owner == winners[0].owner
    for store in layers:
        store.close()


def _claim_in_process(path: str, keys: list[str], barrier: Any, results: Any) -> None:
    try:
        store = SQLitePersistenceLayer(path)
        barrier.wait()
        won = []
        for key in keys:
            record = store.new_inprogress_record(key, "fp", 30, 60)
            try:
                store._put_record(record)
            except IdempotencyItemAlreadyExistsError:
                continue
            won.append((key, record.owner))
        store.close()
        results.put((os.getpid(), won))
    except BaseException as exc:
        results.put((os.getpid(), f"{type(exc).__name__}: {exc}"))  # for the parent to report


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_4_processes_on_one_file_one_winner_per_key(db: Path, start_method: str) -> None:
    """Four processes claim the same keys (the first one on a file that does not exist yet)
    at the same moment: every key has exactly one winner, and it is the stored owner.
    (Not forked from this multi-threaded process: see the fork test and the gunicorn ones.)"""
    if start_method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {start_method} start method here")
    context = multiprocessing.get_context(start_method)
    keys = [KEY] + [f"scope#{i}" for i in range(199)]
    barrier = context.Barrier(4)
    results = context.Queue()
    processes = [
        context.Process(target=_claim_in_process, args=(str(db), keys, barrier, results))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=90) for _ in processes]
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    assert all(isinstance(won, list) for _, won in outcomes), [
        won for _, won in outcomes if not isinstance(won, list)
    ]
    winners: dict[str, list[bytes]] = {}
    for _, won in outcomes:
        for key, owner in won:
            winners.setdefault(key, []).append(owner)
    assert sorted(winners) == sorted(keys)
    assert all(len(owners) == 1 for owners in winners.values()), winners
    reader = SQLitePersistenceLayer(db)
    for key, owners in winners.items():
        assert reader._get_record(key).owner == owners[0]
    reader.close()


# --- Fencing and lease loss --------------------------------------------------------------------
def test_lease_loss_across_processes_views_fences_the_old_owner(db: Path) -> None:
    """Two layers on one file stand for two worker processes."""
    a, b = SQLitePersistenceLayer(db), SQLitePersistenceLayer(db)
    old = new_claim(a, lease=0.2)
    a._put_record(old)
    time.sleep(0.3)
    # The lease ran out: b takes the key over; a can no longer renew, complete or release.
    new = new_claim(b)
    b._put_record(new)
    renewed = replace(old, in_progress_expiry_timestamp=int((time.time() + 30) * 1000))
    with pytest.raises(IdempotencyOwnershipError):
        a._renew_lease(renewed)
    with pytest.raises(IdempotencyOwnershipError):
        a._update_record(a.completed_record(old, b"late", 60))
    with pytest.raises(IdempotencyOwnershipError):
        a._delete_record(old)
    assert b._get_record(KEY).owner == new.owner
    b._update_record(b.completed_record(new, b"done", 60))
    # The completed record refuses a renewal even by its own owner (contract C1).
    with pytest.raises(IdempotencyOwnershipError):
        b._renew_lease(
            replace(new, in_progress_expiry_timestamp=renewed.in_progress_expiry_timestamp)
        )
    assert b._get_record(KEY).response_data == b"done"
    a.close()
    b.close()


def test_lapsed_unclaimed_lease_is_taken_back_and_completed(layer: SQLitePersistenceLayer) -> None:
    old = new_claim(layer, lease=0.1)
    layer._put_record(old)
    time.sleep(0.2)
    with pytest.raises(IdempotencyItemNotFoundError):
        layer._get_record(KEY)  # expired: not live for anyone
    layer._renew_lease(replace(old, in_progress_expiry_timestamp=int((time.time() + 30) * 1000)))
    assert layer._get_record(KEY).status == STATUS_INPROGRESS
    layer._update_record(layer.completed_record(old, b"ok", 60))
    assert layer._get_record(KEY).response_data == b"ok"


# --- Purging ---------------------------------------------------------------------------------
def _rows(db: Path) -> int:
    raw = sqlite3.connect(db)
    try:
        return int(raw.execute("SELECT count(*) FROM idempotency_records").fetchone()[0])
    finally:
        raw.close()


def test_purge_expired_in_bounded_batches(layer: SQLitePersistenceLayer, db: Path) -> None:
    for i in range(25):
        layer._put_record(new_claim(layer, f"scope#old{i}", lease=0.4))
    for i in range(5):
        layer._put_record(new_claim(layer, f"scope#live{i}"))
    time.sleep(0.5)
    assert layer.purge_expired(batch=10, max_batches=1) == 10
    assert _rows(db) == 20
    assert layer.purge_expired(batch=10) == 15
    assert _rows(db) == 5
    for i in range(5):
        assert layer._get_record(f"scope#live{i}").status == STATUS_INPROGRESS


def test_every_nth_claim_purges_one_batch(db: Path) -> None:
    store = SQLitePersistenceLayer(db, purge_every=10, purge_batch=4)
    for i in range(9):
        store._put_record(new_claim(store, f"scope#old{i}", lease=0.4))
    time.sleep(0.5)
    assert _rows(db) == 9
    store._put_record(new_claim(store, "scope#tenth"))  # the tenth claim purges 4
    assert _rows(db) == 6
    store.close()


# --- Interruptions -----------------------------------------------------------------------------
def test_signal_exception_during_a_blocked_claim_leaves_no_transaction(
    layer: SQLitePersistenceLayer,
    db: Path,
    signal_interrupt: Callable[..., contextlib.AbstractContextManager[list[bool]]],
) -> None:
    """The claim waits for another process's write lock; SIGALRM's exception arrives while it
    waits, the lock is freed, the statement ends. Whatever the caller saw, no lock is left
    held, the key is claimed by that claim or free, and the layer works on."""
    with contextlib.suppress(IdempotencyItemNotFoundError):
        layer._get_record(KEY)  # open the connection and create the schema first
    record = new_claim(layer)
    holder = write_lock_held(db)
    other = holder.__enter__()
    timer = threading.Timer(0.4, lambda: holder.__exit__(None, None, None))
    timer.start()
    with pytest.raises(Interrupted), signal_interrupt(0.1) as fired:
        layer._put_record(record)
        time.sleep(5)  # the claim went through before the signal: wait for it here
    timer.join()
    assert fired[0]
    del other
    assert lock_is_free(db)
    assert not layer._connection().in_transaction
    try:
        stored = layer._get_record(KEY)
        assert stored.owner == record.owner
    except IdempotencyItemNotFoundError:
        pass
    layer._put_record(new_claim(layer, "scope#after"))


def test_interruption_between_the_statements_of_a_claim_discards_the_connection(
    layer: SQLitePersistenceLayer, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt after the lost claim's upsert, before its read: the thread's
    connection is closed and replaced, never left inside a transaction."""
    layer._put_record(new_claim(layer))
    before = layer._connection()

    def interrupted(conn: sqlite3.Connection, key: str) -> DataRecord | None:
        raise KeyboardInterrupt

    monkeypatch.setattr(layer, "_read", interrupted)
    with pytest.raises(KeyboardInterrupt):
        layer._put_record(new_claim(layer))
    monkeypatch.undo()
    assert lock_is_free(db)
    after = layer._connection()
    assert after is not before
    with pytest.raises(sqlite3.ProgrammingError):
        before.execute("SELECT 1")  # closed
    with pytest.raises(IdempotencyItemAlreadyExistsError):
        layer._put_record(new_claim(layer))


def test_locked_database_is_a_typed_error_and_the_claim_did_not_land(db: Path) -> None:
    store = SQLitePersistenceLayer(db, busy_timeout=0.05)
    with contextlib.suppress(IdempotencyItemNotFoundError):
        store._get_record(KEY)
    with write_lock_held(db), pytest.raises(IdempotencyPersistenceLayerError):
        store._put_record(new_claim(store))
    assert not store._connection().in_transaction
    with pytest.raises(IdempotencyItemNotFoundError):
        store._get_record(KEY)
    store.close()


# --- Async: off the loop, cancellation ---------------------------------------------------------
def test_async_claim_does_not_block_the_event_loop(layer: SQLitePersistenceLayer, db: Path) -> None:
    """While the claim waits for a write lock, the loop keeps running other tasks."""
    with contextlib.suppress(IdempotencyItemNotFoundError):
        layer._get_record(KEY)

    async def main() -> int:
        ticks = 0
        claim_task = asyncio.ensure_future(layer._put_record_async(new_claim(layer)))
        while not claim_task.done():
            await asyncio.sleep(0.01)
            ticks += 1
            if ticks == 20:
                holder.__exit__(None, None, None)
        await claim_task
        return ticks

    holder = write_lock_held(db)
    holder.__enter__()
    assert asyncio.run(main()) >= 20
    assert layer._get_record(KEY).status == STATUS_INPROGRESS


def test_cancelled_claim_whose_insert_committed_is_given_back(
    layer: SQLitePersistenceLayer, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task is cancelled while its claim waits for the lock; the claim then commits in
    the worker thread. The caller gets CancelledError only once the statement has ended,
    and the claim it will never use is released: the key is free, not blocked for a lease."""
    with contextlib.suppress(IdempotencyItemNotFoundError):
        layer._get_record(KEY)

    started = entered(layer, "_put_record", monkeypatch)

    async def main() -> None:
        task = asyncio.ensure_future(layer._put_record_async(new_claim(layer)))
        assert await asyncio.to_thread(started.wait, 10)
        await asyncio.sleep(0.05)  # the worker thread is inside the INSERT, waiting
        task.cancel()
        threading.Timer(0.2, lambda: holder.__exit__(None, None, None)).start()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Same key, same worker thread: queued behind the release.
        with pytest.raises(IdempotencyItemNotFoundError):
            await layer._get_record_async(KEY)

    holder = write_lock_held(db)
    holder.__enter__()
    asyncio.run(main())
    layer._put_record(new_claim(layer))  # free for the retry


def test_cancelled_renewal_cannot_land_after_the_release(
    layer: SQLitePersistenceLayer, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease stops by cancelling its renewal task, then the key is released: the renewal
    (contract C1 takes an absent key back) must not re-store the claim after the release."""
    claim = new_claim(layer)
    layer._put_record(claim)
    renewed = replace(claim, in_progress_expiry_timestamp=int((time.time() + 30) * 1000))

    started = entered(layer, "_renew_lease", monkeypatch)

    async def main() -> None:
        renewal = asyncio.ensure_future(layer._renew_lease_async(renewed))
        assert await asyncio.to_thread(started.wait, 10)
        await asyncio.sleep(0.05)  # waiting for the lock in its worker thread
        renewal.cancel()
        release = asyncio.ensure_future(layer._delete_record_async(claim))
        await asyncio.sleep(0.1)
        holder.__exit__(None, None, None)
        with contextlib.suppress(asyncio.CancelledError):
            await renewal
        await release

    holder = write_lock_held(db)
    holder.__enter__()
    asyncio.run(main())
    with pytest.raises(IdempotencyItemNotFoundError):
        layer._get_record(KEY)


# --- Fork --------------------------------------------------------------------------------------
def _child_after_fork(layer: SQLitePersistenceLayer, inherited: sqlite3.Connection, q: Any) -> None:
    try:
        from idempotent_middleware.persistence import sqlite as sqlite_module

        # The fork hook closed the parent's idle connection: nothing is inherited or parked.
        parked = any(conn is inherited for conn in sqlite_module._inherited)
        mine = layer._connection()
        fresh = mine is not inherited and not parked
        layer._put_record(layer.new_inprogress_record("scope#child", "fp", 30, 60))

        async def claim_async() -> None:
            await layer._put_record_async(layer.new_inprogress_record("scope#child2", "fp", 30, 60))

        asyncio.run(asyncio.wait_for(claim_async(), 20))
        q.put(("ok", fresh))
    except BaseException as exc:
        q.put(("error", repr(exc)))


@pytest.mark.timeout(60)
def test_forked_child_never_uses_the_parents_connection_or_threads(
    layer: SQLitePersistenceLayer,
) -> None:
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork here")

    async def warm() -> None:  # the parent has a worker thread and its connection too
        await layer._put_record_async(new_claim(layer, "scope#parent-async"))

    asyncio.run(warm())
    layer._put_record(new_claim(layer))
    inherited = layer._connection()
    context = multiprocessing.get_context("fork")
    q = context.Queue()
    child = context.Process(target=_child_after_fork, args=(layer, inherited, q))
    child.start()
    outcome = q.get(timeout=40)
    child.join(20)
    assert outcome == ("ok", True)
    assert layer._get_record("scope#child").status == STATUS_INPROGRESS
    assert layer._get_record("scope#child2").status == STATUS_INPROGRESS
    with pytest.raises(sqlite3.ProgrammingError):  # closed by the fork hook, idle at fork
        inherited.execute("SELECT 1")
    assert layer._connection() is not inherited  # the parent reopened on next use
    assert layer._get_record(KEY).status == STATUS_INPROGRESS


def test_a_row_that_is_not_a_record_is_a_typed_error(
    layer: SQLitePersistenceLayer, db: Path
) -> None:
    layer._put_record(new_claim(layer))
    raw = sqlite3.connect(db, isolation_level=None)
    raw.execute("UPDATE idempotency_records SET status = 'BOGUS', owner = x'00'")
    raw.close()
    with pytest.raises(IdempotencyCorruptRecordError):
        layer._get_record(KEY)
    with pytest.raises(IdempotencyCorruptRecordError):
        layer._put_record(new_claim(layer))  # the lost claim reads what holds the key
    assert not layer._connection().in_transaction


def _die_holding_the_write_lock(path: str, key: str) -> None:
    store = SQLitePersistenceLayer(path)
    store._put_record(store.new_inprogress_record(key, "fp", 30, 60))
    conn = store._connection()
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("DELETE FROM idempotency_records")  # uncommitted, in the WAL at most
    os.kill(os.getpid(), 9)


@pytest.mark.timeout(60)
def test_a_worker_killed_inside_a_write_blocks_nobody_and_loses_nothing(db: Path) -> None:
    """SIGKILL while holding the write lock mid-transaction: the kernel drops the lock, the
    uncommitted write is never seen, the committed claim stays."""
    context = multiprocessing.get_context("spawn")
    child = context.Process(target=_die_holding_the_write_lock, args=(str(db), KEY))
    child.start()
    child.join(30)
    assert child.exitcode == -9
    store = SQLitePersistenceLayer(db, busy_timeout=1.0)
    assert store._get_record(KEY).status == STATUS_INPROGRESS
    store._put_record(new_claim(store, "scope#after-kill"))
    assert lock_is_free(db)
    store.close()


def test_a_threads_connection_is_closed_when_the_thread_ends(layer: SQLitePersistenceLayer) -> None:
    """Thread-per-request servers: no connection outlives its thread (3.13 warns otherwise)."""
    opened: list[sqlite3.Connection] = []

    def work() -> None:
        layer._put_record(new_claim(layer, "scope#thread"))
        opened.append(layer._connection())

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    with pytest.raises(sqlite3.ProgrammingError):
        opened[0].execute("SELECT 1")  # closed with its thread
    assert layer._get_record("scope#thread").status == STATUS_INPROGRESS


def test_close_closes_every_threads_connection_and_the_layer_reopens(
    layer: SQLitePersistenceLayer,
) -> None:
    async def claim_async() -> None:
        await layer._put_record_async(new_claim(layer, "scope#async"))

    asyncio.run(claim_async())
    mine = layer._connection()
    layer.close()
    with pytest.raises(sqlite3.ProgrammingError):
        mine.execute("SELECT 1")
    assert layer._get_record("scope#async").status == STATUS_INPROGRESS
    asyncio.run(claim_async_again(layer))


async def claim_async_again(layer: SQLitePersistenceLayer) -> None:
    with pytest.raises(IdempotencyItemAlreadyExistsError):
        await layer._put_record_async(new_claim(layer, "scope#async"))


def test_cancelled_completion_still_lands_even_before_its_thread_took_it(db: Path) -> None:
    """A completion queued behind a statement waiting for the lock, its task cancelled
    before the worker thread takes it: it is written all the same (the handler ran; a
    completion dropped here would let a retry run it again once the lease is out)."""
    store = SQLitePersistenceLayer(db, async_threads=1)
    busy, done = new_claim(store, "scope#busy"), new_claim(store, "scope#done")
    store._put_record(busy)
    store._put_record(done)
    renewed = replace(busy, in_progress_expiry_timestamp=int((time.time() + 30) * 1000))

    async def main() -> None:
        blocker = asyncio.ensure_future(store._renew_lease_async(renewed))
        await asyncio.sleep(0.2)  # the only worker thread waits for the lock
        completion = asyncio.ensure_future(
            store._update_record_async(store.completed_record(done, b"result", 60))
        )
        await asyncio.sleep(0.05)
        completion.cancel()
        await asyncio.sleep(0.05)
        holder.__exit__(None, None, None)
        with contextlib.suppress(asyncio.CancelledError):
            await completion
        await blocker

    holder = write_lock_held(db)
    holder.__enter__()
    asyncio.run(main())
    assert store._get_record("scope#done").response_data == b"result"
    store.close()


def test_a_status_assigned_after_construction_is_never_stored(
    layer: SQLitePersistenceLayer,
) -> None:
    record = new_claim(layer)
    record.status = "EXPIRED"
    for write in (layer._put_record, layer._update_record, layer._renew_lease):
        with pytest.raises(IdempotencyInvalidStatusError):
            write(record)
    with pytest.raises(IdempotencyItemNotFoundError):
        layer._get_record(KEY)
