"""Races and fork hazards of the SQLite layer found in review: a record that vanishes
between a lost claim's two statements, connections carried across ``fork``, a claim that waits
for the write lock past its lease, and keys SQLite cannot bind. Each test failed before its fix.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from idempotent_middleware import (
    IdempotencyAlreadyInProgressError,
    IdempotencyConfig,
    IdempotencyItemAlreadyExistsError,
    IdempotencyKeyError,
    IdempotencyPersistenceLayerError,
    SQLitePersistenceLayer,
    idempotent_function,
)
from idempotent_middleware.persistence import sqlite as sqlite_module

pytestmark = pytest.mark.timeout(120)

KEY = "scope#one"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "idem.sqlite3"


@pytest.fixture
def two_layers(db: Path) -> Iterator[tuple[SQLitePersistenceLayer, SQLitePersistenceLayer]]:
    """Two layers on one file: two processes' views (separate connections)."""
    a, b = SQLitePersistenceLayer(db), SQLitePersistenceLayer(db)
    yield a, b
    a.close()
    b.close()


# --- a record that vanishes between the lost INSERT and its SELECT counts as a win ---------
def test_record_released_between_a_lost_insert_and_its_read_is_still_a_lost_claim(
    two_layers: tuple[SQLitePersistenceLayer, SQLitePersistenceLayer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A holds the key; B's INSERT loses to A's live row; A's release lands before B's
    SELECT (another process, between B's two statements). B must not be told it won: no row
    of B's was written, so a third claimer C wins too and two handlers run for one key."""
    a, b = two_layers
    claim_a = a.new_inprogress_record(KEY, "fp", 30, 60)
    a._put_record(claim_a)

    original_read = b._read

    def read_after_release(conn: sqlite3.Connection, key: str) -> Any:
        a._delete_record(claim_a)  # A's handler raised: its release lands in between
        return original_read(conn, key)

    monkeypatch.setattr(b, "_read", read_after_release)
    claim_b = b.new_inprogress_record(KEY, "fp", 30, 60)
    winners = []
    try:
        b._put_record(claim_b)
        winners.append("B")
    except IdempotencyItemAlreadyExistsError:
        pass
    monkeypatch.undo()
    claim_c = a.new_inprogress_record(KEY, "fp", 30, 60)
    try:
        a._put_record(claim_c)
        winners.append("C")
    except IdempotencyItemAlreadyExistsError:
        pass
    assert len(winners) <= 1, f"two winners for one key: {winners}"


def test_lease_running_out_between_a_lost_insert_and_its_read_is_still_a_lost_claim(
    two_layers: tuple[SQLitePersistenceLayer, SQLitePersistenceLayer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same hole without any release: A's lease runs out between B's INSERT (A still live)
    and B's SELECT (A expired). B returns as a winner without a row; C then wins too."""
    a, b = two_layers
    claim_a = a.new_inprogress_record(KEY, "fp", 30, 60)
    a._put_record(claim_a)
    lease_end = claim_a.in_progress_expiry_timestamp / 1000  # type: ignore[operator]

    original_read = b._read
    real_time = sqlite_module.time.time

    class Clock:
        """The layer's ``time`` module with a settable wall clock."""

        now: float | None = None
        monotonic = staticmethod(time.monotonic)
        sleep = staticmethod(time.sleep)

        def time(self) -> float:
            return self.now if self.now is not None else real_time()

    clock = Clock()

    def read_later(conn: sqlite3.Connection, key: str) -> Any:
        clock.now = lease_end + 0.001  # the SELECT runs just after A's lease ends
        return original_read(conn, key)

    monkeypatch.setattr(sqlite_module, "time", clock)
    clock.now = lease_end - 0.001  # the INSERT runs just before A's lease ends
    monkeypatch.setattr(b, "_read", read_later)
    winners = []
    try:
        b._put_record(b.new_inprogress_record(KEY, "fp", 30, 60))
        winners.append("B")
    except IdempotencyItemAlreadyExistsError:
        pass
    monkeypatch.setattr(b, "_read", original_read)  # the clock stays just after A's lease
    try:
        a._put_record(a.new_inprogress_record(KEY, "fp", 30, 60))
        winners.append("C")
    except IdempotencyItemAlreadyExistsError:
        pass
    assert len(winners) <= 1, f"two winners for one key: {winners}"


def test_a_vanished_record_never_lets_two_functions_run_for_one_key(
    two_layers: tuple[SQLitePersistenceLayer, SQLitePersistenceLayer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through ``idempotent_function``: A raises (its release is allowed), B and C then
    both execute under one key while neither released: two successful runs."""
    a, b = two_layers
    config = IdempotencyConfig(lease_seconds=30)
    runs: list[str] = []
    b_lost_insert = threading.Event()
    a_released = threading.Event()
    c_may_run = threading.Event()

    def make(layer: SQLitePersistenceLayer) -> Any:
        @idempotent_function(data_keyword_argument="order", persistence_store=layer, config=config)
        def charge(order: dict[str, Any], who: str) -> str:
            runs.append(who)
            if who == "A":
                assert b_lost_insert.wait(10)
                raise RuntimeError("A fails: its claim is released")
            if who == "B":
                c_may_run.set()
                assert c_done.wait(10)
            return who

        return charge

    charge_a, charge_b = make(a), make(b)
    c_done = threading.Event()
    original_read = b._read

    def read_after_release(conn: sqlite3.Connection, key: str) -> Any:
        b_lost_insert.set()
        assert a_released.wait(10)
        return original_read(conn, key)

    monkeypatch.setattr(b, "_read", read_after_release)
    original_delete = a._delete_record

    def delete_then_signal(record: Any) -> None:
        original_delete(record)
        a_released.set()

    monkeypatch.setattr(a, "_delete_record", delete_then_signal)

    def run_a() -> None:
        with pytest.raises(RuntimeError):
            charge_a(order={"id": 1}, who="A")

    ta = threading.Thread(target=run_a)
    ta.start()
    while not runs:  # A is running
        threading.Event().wait(0.01)
    results: dict[str, Any] = {}
    tb = threading.Thread(
        target=lambda: results.setdefault("B", charge_b(order={"id": 1}, who="B"))
    )
    tb.start()
    assert c_may_run.wait(10)  # B is running (rightly after a re-claim, or wrongly)
    try:  # noqa: SIM105
        results["C"] = charge_a(order={"id": 1}, who="C")
    except IdempotencyAlreadyInProgressError:
        pass  # the right answer: B holds the key
    c_done.set()
    ta.join(10)
    tb.join(10)
    successful = [who for who in runs if who != "A"]
    assert len(successful) <= 1, f"the handler ran to success {len(successful)} times: {runs}"


# --- fork with the parent's connections open -------------------------------------------
HERE = Path(__file__).parent / "sqlite_fork"


def _script(name: str, *args: str) -> str:
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(HERE.parent.parent.parent))
    done = subprocess.run(
        [sys.executable, str(HERE / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("how", ["close", "thread"])
def test_parent_closing_its_connections_after_fork_keeps_the_childs_wal(
    tmp_path: Path, how: str
) -> None:
    out = _script("split.py", str(tmp_path), how)
    assert "scope#K (held by the child): LOST" in out, out


def test_fork_while_a_parent_thread_writes_waits_for_it_and_the_child_can_write(
    tmp_path: Path,
) -> None:
    """The fork hook waits (bounded) for the write in flight, then closes the connection."""
    out = _script("midstatement.py", str(tmp_path / "db.sqlite3"), "0.5")
    assert "child claim 0: ok" in out, out
    assert "child claim 1: ok" in out, out


def test_fork_during_a_write_longer_than_the_bound_is_refused_typed_in_the_child(
    tmp_path: Path,
) -> None:
    """A connection still busy when the wait runs out is inherited: the child refuses
    (503-class, saying what to do) instead of writing without real locks."""
    out = _script("midstatement.py", str(tmp_path / "db.sqlite3"), "3")
    for i in range(2):
        assert f"child claim {i}: IdempotencyPersistenceLayerError" in out, out
        assert "open the store after fork" in out, out
    assert "parent claim: ok" in out, out


# --- a claim that waited for the write lock is written with a lease already run out -------
def test_a_claim_that_waited_past_half_its_lease_is_given_back(
    db: Path,
) -> None:
    """The lease end is an absolute time computed BEFORE the INSERT waits up to
    ``busy_timeout`` for another process's write lock. With a lease shorter than that wait
    (a short ``lease_seconds``, or a Lambda-style ``remaining_time_in_millis``) the claim
    commits already expired: its handler runs, and the next claimer takes the key over and
    runs too. (With lease < 2 x wait the first renewal, due lease/2 after the claim
    returned, comes after the real lease end: the same window, narrower.)"""
    store = SQLitePersistenceLayer(db, busy_timeout=5.0)
    store._put_record(store.new_inprogress_record("scope#warm", "fp", 30, 60))
    config = IdempotencyConfig(lease_seconds=1.0)
    runs: list[str] = []
    a_running = threading.Event()
    b_done = threading.Event()

    @idempotent_function(data_keyword_argument="order", persistence_store=store, config=config)
    def charge(order: dict[str, Any], who: str) -> str:
        runs.append(who)
        if who == "A":
            a_running.set()
            b_done.wait(10)
        return who

    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another worker's long write (a purge, a VACUUM...)

    def run_a() -> None:
        try:  # noqa: SIM105
            charge(order={"id": 1}, who="A")
        except IdempotencyPersistenceLayerError:
            pass  # refused typed (a 503): acceptable, nothing ran

    ta = threading.Thread(target=run_a)
    ta.start()
    time.sleep(1.5)  # A's INSERT waits for the lock longer than its 1 s lease
    other.execute("COMMIT")
    other.close()
    a_running.wait(3)  # A's handler runs (or A was refused)
    try:  # noqa: SIM105
        charge(order={"id": 1}, who="B")  # while A's handler runs
    except IdempotencyAlreadyInProgressError:
        pass
    b_done.set()
    ta.join(10)
    store.close()
    assert len(runs) <= 1, f"the handler ran {len(runs)} times: {runs}"


# --- a key with a lone surrogate escapes as a bare UnicodeEncodeError -----------------------
def test_a_lone_surrogate_in_the_key_is_a_typed_key_error(db: Path) -> None:
    """``key_prefix`` is caller text; a lone surrogate cannot be bound as SQLite TEXT. That is
    bad input (a key error, 400), not an interruption: the connection is kept."""
    store = SQLitePersistenceLayer(db)

    @idempotent_function(
        data_keyword_argument="order", persistence_store=store, key_prefix="orders\ud800"
    )
    def charge(order: dict[str, Any]) -> str:
        return "charged"

    try:
        conn = store._connection()
        with pytest.raises(IdempotencyKeyError):
            charge(order={"id": 1})
        assert store._connection() is conn
    finally:
        store.close()


# --- The database file deleted (or replaced) under a running process ---------------------------
def test_a_new_connection_to_a_replaced_file_is_refused_typed(db: Path) -> None:
    """Old connections go on with the unlinked file; a new one (a new thread) would create a
    fresh file: two stores behind one path. The layer notices the other inode and refuses."""
    store = SQLitePersistenceLayer(db)
    store._put_record(store.new_inprogress_record("scope#warm", "fp", 30, 60))
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink()
    winners = []
    refused = []

    def claim(who: str) -> None:
        try:
            store._put_record(store.new_inprogress_record(KEY, "fp", 30, 60))
            winners.append(who)
        except IdempotencyItemAlreadyExistsError:
            pass
        except IdempotencyPersistenceLayerError as exc:
            refused.append(str(exc))

    claim("main thread, old connection")
    t = threading.Thread(target=claim, args=("new thread, new connection",))
    t.start()
    t.join(30)
    store.close()
    assert len(winners) <= 1, f"two winners for one key: {winners}"
    assert refused and "deleted or replaced" in refused[0]
