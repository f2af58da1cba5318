"""SQLite persistence: several processes on one host share one database file, no server.

Built on the standard library's ``sqlite3``. Every operation is ONE autocommit statement
(claim, complete, renew and release are each an ``INSERT ... ON CONFLICT DO UPDATE ... WHERE``
or a ``DELETE``), plus a read on the rarer path (a lost claim reads the record it lost to; a
refused release looks for the owner that refused it). No Python code ever runs while a
transaction is open, so an interruption between statements cannot leave one open.

Why no concurrent claimer can be missed: SQLite admits one writer at a time for the whole
database file (the WAL write lock, shared by every process on the host through the ``-shm``
file). The claim's conflict check and its write run inside that one write transaction, and a
write transaction in WAL mode always works on the newest committed state: a connection whose
snapshot is older cannot take the write lock (``SQLITE_BUSY_SNAPSHOT``), and an autocommit
statement then starts again from the newest snapshot under the busy handler. So of two
claimers the second one's ``INSERT`` sees the first one's committed, live row and its
``WHERE live_until < now`` refuses to overwrite it.

Time: there is no server clock. Every record timestamp is Unix time read by
``time.time()`` in the process that wrote it (``BasePersistenceLayer``), and this layer judges
liveness with ``time.time()`` too, passed into each statement as ``:now``. All the processes
sharing the file run on one host, so they read one clock.

``RETURNING`` is deliberately not used: Python's ``sqlite3`` steps such a statement once and
leaves it open until its rows are fetched, and an open statement keeps the write lock (even
through ``Connection.close()``); an interruption at that moment would block every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from ..exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyConfigurationError,
    IdempotencyCorruptRecordError,
    IdempotencyError,
    IdempotencyInvalidStatusError,
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyKeyError,
    IdempotencyOwnershipError,
    IdempotencyPersistenceLayerError,
)
from .base import (
    INVALIDATE_REFUSED,
    BasePersistenceLayer,
    check_limit,
    describe_record,
    like_prefix,
)
from .record import STATUS_COMPLETED, STATUS_INPROGRESS, DataRecord

T = TypeVar("T")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_STATUSES = (STATUS_INPROGRESS, STATUS_COMPLETED)

#: Every layer of this process, so that a forked child gives each a fresh lock.
_layers: weakref.WeakSet[SQLitePersistenceLayer] = weakref.WeakSet()

#: Connections inherited through ``fork``: parked, never used or closed in the child (SQLite
#: forbids carrying a connection across a fork; closing it could touch the parent's locks).
_inherited: list[sqlite3.Connection] = []

#: Database files (absolute paths) of which this process inherited a connection that was busy
#: in another thread at fork time: SQLite's per-process lock bookkeeping for those files is
#: the parent's, so no statement here can be run safely on them (see ``_before_fork``).
_tainted: set[str] = set()

#: How long a fork waits, in all, for statements in flight on other threads to end.
_FORK_WAIT = 2.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS "{table}" (
    idempotency_key TEXT PRIMARY KEY NOT NULL,
    status TEXT NOT NULL,
    owner BLOB NOT NULL,
    payload_hash TEXT NOT NULL,
    expiry REAL,
    lease_expiry INTEGER,
    live_until REAL,
    response BLOB
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS "{table}_live_until" ON "{table}" (live_until);
"""

_COLUMNS = (
    "idempotency_key, status, owner, payload_hash, expiry, lease_expiry, live_until, response"
)
_UPSERT = (
    'INSERT INTO "{table}" (' + _COLUMNS + ") "
    "VALUES (:key, :status, :owner, :hash, :expiry, :lease, :live, :response) "
    "ON CONFLICT (idempotency_key) DO UPDATE SET status = excluded.status, "
    "owner = excluded.owner, payload_hash = excluded.payload_hash, expiry = excluded.expiry, "
    "lease_expiry = excluded.lease_expiry, live_until = excluded.live_until, "
    "response = excluded.response WHERE "
)
#: Unqualified columns in the DO UPDATE's WHERE are the row already stored.
_EXPIRED = "live_until < :now"
_LIVE = "(live_until IS NULL OR live_until >= :now)"
_STATEMENTS = {
    # Claim: insert, or take over a row that is no longer live (lease or TTL run out).
    "claim": _UPSERT + _EXPIRED,
    # Complete: the owner's row, or a key nobody holds any more (absent or expired).
    "complete": _UPSERT + "owner = excluded.owner OR " + _EXPIRED,
    # Renew (contract C1): the owner's in-progress row, or a key nobody holds any more.
    "renew": _UPSERT + f"(owner = excluded.owner AND status = '{STATUS_INPROGRESS}') OR {_EXPIRED}",
    "release": 'DELETE FROM "{table}" WHERE idempotency_key = :key AND owner = :owner',
    "held_by_other": 'SELECT 1 FROM "{table}" WHERE idempotency_key = :key '
    f"AND owner != :owner AND {_LIVE}",
    "get": 'SELECT status, owner, payload_hash, expiry, lease_expiry, response FROM "{table}" '
    f"WHERE idempotency_key = :key AND {_LIVE}",
    "purge": 'DELETE FROM "{table}" WHERE idempotency_key IN (SELECT idempotency_key '
    'FROM "{table}" WHERE live_until < :now LIMIT :batch)',
}


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (primary codes 5 and 6; the message before 3.11)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (5, 6)
    return "locked" in str(exc) or "busy" in str(exc)


def _live_until(record: DataRecord) -> float | None:
    """When the record stops being live: the rule of ``DataRecord.is_expired``."""
    if record.status == STATUS_INPROGRESS and record.in_progress_expiry_timestamp is not None:
        return record.in_progress_expiry_timestamp / 1000
    return record.expiry_timestamp


def _params(record: DataRecord) -> dict[str, Any]:
    if record.status not in _STATUSES:  # assigned after construction: never stored
        raise IdempotencyInvalidStatusError(f"unknown idempotency record status {record.status!r}")
    return {
        "key": record.idempotency_key,
        "status": record.status,
        "owner": record.owner,
        "hash": record.payload_hash,
        "expiry": record.expiry_timestamp,
        "lease": record.in_progress_expiry_timestamp,
        "live": _live_until(record),
        "response": record.response_data,
        "now": time.time(),
    }


def _decode(key: str, row: tuple[Any, ...]) -> DataRecord:
    status, owner, payload_hash, expiry, lease, response = row
    if (
        status not in _STATUSES
        or not isinstance(owner, bytes)
        or len(owner) != 16
        or not isinstance(payload_hash, str)
        or not (response is None or isinstance(response, bytes))
    ):
        raise IdempotencyCorruptRecordError(f"undecodable record under {key!r}")
    return DataRecord(
        idempotency_key=key,
        status=status,
        expiry_timestamp=expiry,
        in_progress_expiry_timestamp=lease,
        response_data=response,
        payload_hash=payload_hash,
        owner=owner,
    )


class _Slot:
    """One thread's connection, held in a ``threading.local``: when its thread ends, the slot
    goes and closes the connection (no connection outlives its thread). In a forked child
    (another pid) it parks the connection instead of closing it."""

    __slots__ = ("__weakref__", "busy", "conn", "pid")

    def __init__(self, conn: sqlite3.Connection | None) -> None:
        self.conn: sqlite3.Connection | None = conn
        self.pid = os.getpid()
        #: Held while a statement runs on ``conn``: a fork closes only idle connections.
        self.busy = threading.Lock()

    def release(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if self.pid == os.getpid():
            with contextlib.suppress(Exception):
                conn.close()
        else:
            _inherited.append(conn)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # also at interpreter exit
            self.release()


class SQLitePersistenceLayer(BasePersistenceLayer):
    """Records in one SQLite database file (WAL mode), shared by the processes of one host.

    ``path`` is the database file (created with its table on first use). ``busy_timeout`` is
    how long a statement waits for another process's write lock before the store answers 503.
    ``synchronous`` is SQLite's durability setting: ``FULL`` (the default) syncs the WAL at
    every commit, so a power loss cannot take back a claim or a stored response; ``NORMAL``
    is faster and loses at most the last commits on power loss (never on a process crash).
    Expired rows are reclaimed in place by the next claim of their key and removed by
    ``purge_expired``, which every ``purge_every``-th claim of a process also runs for one
    batch (``purge_every=0`` turns that off). Async callers run the statements on
    ``async_threads`` worker threads, one per shard of keys, so that the operations on one key
    run in the order they were asked for.
    """

    kind = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        table: str = "idempotency_records",
        *,
        busy_timeout: float = 5.0,
        synchronous: str = "FULL",
        async_threads: int = 4,
        purge_every: int = 1000,
        purge_batch: int = 500,
    ) -> None:
        super().__init__()
        if sqlite3.sqlite_version_info < (3, 24, 0):  # pragma: no cover - a 2018 library
            raise IdempotencyConfigurationError(
                f"SQLitePersistenceLayer needs SQLite >= 3.24 (upsert), "
                f"not {sqlite3.sqlite_version}"
            )
        self.path = os.fspath(path)
        if self.path in ("", ":memory:") or self.path.startswith("file:"):
            raise ValueError(
                "SQLitePersistenceLayer needs a database file shared by its connections; "
                "use InMemoryPersistenceLayer for a store in memory"
            )
        if not _IDENTIFIER.fullmatch(table):
            raise ValueError(f"table must be a plain SQL identifier, not {table!r}")
        if busy_timeout < 0:
            raise ValueError("busy_timeout must not be negative")
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {_SYNCHRONOUS}")
        if async_threads < 1:
            raise ValueError("async_threads must be at least 1")
        if purge_every < 0 or purge_batch < 1:
            raise ValueError("purge_every must be >= 0 and purge_batch >= 1")
        self.table = table
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous.upper()
        self.purge_every = purge_every
        self.purge_batch = purge_batch
        self._sql = {name: sql.format(table=table) for name, sql in _STATEMENTS.items()}
        self._schema = _SCHEMA.format(table=table)
        #: Each thread's own connection (``slot``), and every slot, for ``close()``.
        self._local = threading.local()
        self._slots: weakref.WeakSet[_Slot] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._async_threads = async_threads
        self._executors: list[ThreadPoolExecutor] = []
        self._executors_pid = 0
        self._claims = 0
        self._abspath = os.path.abspath(self.path)
        #: (device, inode) of the file the first connection opened: see ``_check_same_file``.
        self._file_id: tuple[int, int] | None = None
        _layers.add(self)

    # --- Connections ------------------------------------------------------------------------
    def _slot(self) -> _Slot:
        """This thread's slot (registered for ``close()`` and the fork hook)."""
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is None:
            slot = self._local.slot = _Slot(None)
            with self._lock:  # held by the fork hook: no slot appears during a fork
                self._slots.add(slot)
        return slot

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection; a new one in a forked child (never the parent's).

        Call with the slot's ``busy`` lock held (``_run`` does), so that a fork does not close
        it under the statement."""
        if self._abspath in _tainted:
            raise IdempotencyPersistenceLayerError(
                f"SQLite: this process was forked while a statement on {self.path!r} ran in "
                "another thread, so it inherited an open connection and cannot use the file "
                "safely; open the store after fork, or close() it before forking"
            )
        slot = self._slot()
        if slot.conn is not None and slot.pid == os.getpid():
            return slot.conn
        slot.release()  # closed by close() or a fork, or the parent's: parked
        conn = self._connect()
        slot.conn, slot.pid = conn, os.getpid()
        return conn

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,  # autocommit: the module never opens a transaction
                check_same_thread=False,  # used by its own thread only; closed by close()
            )
        except sqlite3.Error as exc:
            raise IdempotencyPersistenceLayerError(
                f"SQLite: cannot open {self.path!r}: {exc}"
            ) from exc
        try:
            self._prepare(conn)
            self._check_same_file()
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise IdempotencyPersistenceLayerError(
                    f"SQLite: cannot prepare {self.path!r}: {exc}"
                ) from exc
            raise
        return conn

    def _check_same_file(self) -> None:
        """Refuse a connection to another file than this layer's first one: the file was
        deleted or replaced under the running process, and the connections still open use
        the old one; two stores behind one path would let a key run twice."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise IdempotencyPersistenceLayerError(
                f"SQLite: cannot stat {self.path!r}: {exc}"
            ) from exc
        file_id = (st.st_dev, st.st_ino)
        if self._file_id is None:
            self._file_id = file_id
        elif file_id != self._file_id:
            raise IdempotencyPersistenceLayerError(
                f"SQLite: {self.path!r} was deleted or replaced while this process used it; "
                "restart every worker"
            )

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """WAL mode, durability, and the table (idempotent; every worker may be first).

        Retried until ``busy_timeout``: while another process turns a new file to WAL or
        recovers its WAL, SQLite answers "database is locked" at once, without waiting.
        """
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchall()[0][0]
                if str(mode).lower() != "wal":
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchall()[0][0]
                if str(mode).lower() != "wal":
                    raise IdempotencyPersistenceLayerError(
                        f"SQLite: {self.path!r} cannot use WAL (journal_mode is {mode!r})"
                    )
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")
                conn.executescript(self._schema)
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
                if conn.in_transaction:
                    conn.rollback()
                time.sleep(0.005)

    def _discard(self, conn: sqlite3.Connection) -> None:
        """Close this thread's connection after an interruption; the next use opens anew."""
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is not None and slot.conn is conn:
            slot.release()
        else:
            with contextlib.suppress(Exception):
                conn.close()

    def _run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``operation`` on this thread's connection; SQLite errors become typed ones.

        After an error the connection is rolled back if a transaction is somehow open; after
        an interruption (``KeyboardInterrupt``, a signal's exception) it is closed and
        replaced, so that no connection can stay inside a transaction holding the lock.
        """
        with self._slot().busy:
            conn = self._connection()
            return self._run_on(conn, operation)

    def _run_on(self, conn: sqlite3.Connection, operation: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return operation(conn)
        except UnicodeError as exc:
            # A key (or prefix) with a lone surrogate cannot be bound as TEXT; nothing ran, so
            # the connection is fine. Bad input from the caller: a typed key error (400).
            raise IdempotencyKeyError(
                f"idempotency key cannot be stored as UTF-8 text: {exc}"
            ) from exc
        except sqlite3.Error as exc:
            try:
                if conn.in_transaction:
                    conn.rollback()
            except BaseException:
                self._discard(conn)
                raise
            raise IdempotencyPersistenceLayerError(f"SQLite: {type(exc).__name__}: {exc}") from exc
        except IdempotencyError:  # our own verdicts (a corrupt row): the connection is fine
            raise
        except BaseException:
            self._discard(conn)
            raise

    @staticmethod
    def _changes(conn: sqlite3.Connection, sql: str, params: dict[str, Any]) -> int:
        """Execute one write statement to its end; how many rows it wrote."""
        before = conn.total_changes
        conn.execute(sql, params).close()
        return conn.total_changes - before

    # --- The I/O ----------------------------------------------------------------------------
    def _read(self, conn: sqlite3.Connection, key: str) -> DataRecord | None:
        rows = conn.execute(self._sql["get"], {"key": key, "now": time.time()}).fetchall()
        return _decode(key, rows[0]) if rows else None

    def _get_record(self, idempotency_key: str) -> DataRecord:
        record = self._run(lambda conn: self._read(conn, idempotency_key))
        if record is None:
            raise IdempotencyItemNotFoundError(idempotency_key)
        return record

    def _put_record(self, data_record: DataRecord) -> None:
        key = data_record.idempotency_key

        started = time.time() * 1000

        def claim(conn: sqlite3.Connection) -> tuple[bool, DataRecord | None]:
            if self._changes(conn, self._sql["claim"], _params(data_record)):
                return True, None
            # Lost: read what holds the key (a separate statement; if it has gone meanwhile,
            # released or run out, ``None``: the core claims again, at most a few times).
            return False, self._read(conn, key)

        won, existing = self._run(claim)
        if not won:
            # Lost even when the record vanished before the read: no row of ours was written.
            raise IdempotencyItemAlreadyExistsError(existing)
        lease = data_record.in_progress_expiry_timestamp
        if lease is not None:
            # The lease end was fixed before the INSERT waited (up to busy_timeout) for the
            # write lock. If more than half of the lease went by in that wait, the first
            # renewal (due lease/2 after we return) would come after the lease ends and
            # another claimer could take the key over while the handler runs: give the
            # claim back (fenced) and answer 503 instead.
            now = time.time() * 1000
            if now - started > (lease - started) / 2:
                self._release_quietly(data_record)
                raise IdempotencyPersistenceLayerError(
                    f"SQLite: the claim of {key!r} waited for the write lock longer than half "
                    "its lease; given back"
                )
        if self._claims_since_purge():
            # Housekeeping: if it fails, the claim stands all the same.
            with contextlib.suppress(IdempotencyPersistenceLayerError):
                self.purge_expired(self.purge_batch, max_batches=1)
        # Written only when no live record held the key.
        return None

    def _claims_since_purge(self) -> bool:
        if not self.purge_every:
            return False
        self._claims += 1  # unlocked: a lost increment only shifts the next purge
        if self._claims >= self.purge_every:
            self._claims = 0
            return True
        return False

    def _update_record(self, data_record: DataRecord) -> None:
        params = _params(data_record)
        if not self._run(lambda conn: self._changes(conn, self._sql["complete"], params)):
            raise IdempotencyOwnershipError(data_record.idempotency_key)

    def _delete_record(self, data_record: DataRecord) -> None:
        params = {
            "key": data_record.idempotency_key,
            "owner": data_record.owner,
            "now": time.time(),
        }

        def release(conn: sqlite3.Connection) -> bool:
            if self._changes(conn, self._sql["release"], params):
                return True
            # Nothing of ours to delete: refuse only if another owner holds the key live.
            return not conn.execute(self._sql["held_by_other"], params).fetchall()

        if not self._run(release):
            raise IdempotencyOwnershipError(data_record.idempotency_key)

    def _renew_lease(self, data_record: DataRecord) -> None:
        """Contract C1: store the renewed in-progress record over this owner's own claim, or
        over a key nobody holds (absent or expired); refuse another owner and COMPLETED."""
        params = _params(data_record)
        if not self._run(lambda conn: self._changes(conn, self._sql["renew"], params)):
            raise IdempotencyOwnershipError(data_record.idempotency_key)

    def purge_expired(self, batch: int = 1000, *, max_batches: int | None = None) -> int:
        """Delete expired rows, ``batch`` rows per statement (each its own short write
        transaction, so other processes' claims slip in between); return how many went."""
        if batch < 1:
            raise ValueError("batch must be at least 1")
        sql = self._sql["purge"]
        removed = 0
        done = 0
        while max_batches is None or done < max_batches:
            params = {"now": time.time(), "batch": batch}
            gone = self._run(functools.partial(self._changes, sql=sql, params=params))
            removed += gone
            done += 1
            if gone < batch:
                break
        return removed

    # --- Async: the same statements on worker threads -----------------------------------------
    def _executor(self, key: str) -> ThreadPoolExecutor:
        """The single worker thread of ``key``'s shard (new ones after a fork: the parent's
        threads do not exist in the child)."""
        pid = os.getpid()
        executors = self._executors
        if self._executors_pid != pid or not executors:
            with self._lock:
                if self._executors_pid != pid or not self._executors:
                    self._executors = [
                        ThreadPoolExecutor(1, thread_name_prefix="idempotency-sqlite")
                        for _ in range(self._async_threads)
                    ]
                    self._executors_pid = pid
                executors = self._executors
        return executors[hash(key) % len(executors)]

    async def _in_thread(
        self, key: str, function: Callable[[Any], Any], arg: Any, *, droppable: bool = False
    ) -> Any:
        """Run ``function(arg)`` on ``key``'s worker thread without blocking the event loop.

        One thread per shard keeps the operations on one key in order: a renewal asked for
        before a release cannot land after it. A cancellation never abandons a statement
        half way: the caller waits for it to finish (or fail), then gets the
        ``CancelledError``. Writes run even if their caller is cancelled before the thread
        took them (a dropped completion would let a retry run the handler again, once the
        lease is out); only a claim (or a read) that has not started yet is dropped, as
        nothing has happened then. A claim that committed for a cancelled caller is given
        back: nothing will run under it, and it would block the key for a lease.
        """
        future: Future[Any] = self._executor(key).submit(function, arg)
        try:
            # wrap_future cancels a job not started yet when its caller is cancelled; the
            # shield keeps that from happening to the writes that must land.
            wrapped = asyncio.wrap_future(future)
            return await (wrapped if droppable else asyncio.shield(wrapped))
        except asyncio.CancelledError:
            if not future.cancelled():
                await _settled(future)
                if function == self._put_record and future.exception() is None:
                    # Queued behind it on the same thread, not awaited.
                    self._executor(key).submit(self._release_quietly, arg)
            raise

    def _release_quietly(self, record: DataRecord) -> None:
        # Fenced; if it fails, the claim runs out with its lease.
        with contextlib.suppress(Exception):
            self._delete_record(record)

    async def _get_record_async(self, idempotency_key: str) -> DataRecord:
        return await self._in_thread(  # type: ignore[no-any-return]
            idempotency_key, self._get_record, idempotency_key, droppable=True
        )

    async def _put_record_async(self, data_record: DataRecord) -> None:
        await self._in_thread(
            data_record.idempotency_key, self._put_record, data_record, droppable=True
        )

    async def _update_record_async(self, data_record: DataRecord) -> None:
        await self._in_thread(data_record.idempotency_key, self._update_record, data_record)

    async def _delete_record_async(self, data_record: DataRecord) -> None:
        await self._in_thread(data_record.idempotency_key, self._delete_record, data_record)

    async def _renew_lease_async(self, data_record: DataRecord) -> None:
        await self._in_thread(data_record.idempotency_key, self._renew_lease, data_record)

    def close(self) -> None:
        """Stop the worker threads and close every thread's connection (this process's).

        Call it once no operation is in flight (at shutdown); the layer reopens on next use.
        """
        with self._lock:
            executors, self._executors, self._executors_pid = self._executors, [], 0
            slots = list(self._slots)
        for executor in executors:
            executor.shutdown(wait=True)
        for slot in slots:
            slot.release()

    # --- Readiness and operator inspection ------------------------------------------------------
    def ping(self) -> None:
        """``SELECT 1`` on this thread's connection (a readiness probe)."""
        self._run(lambda conn: conn.execute("SELECT 1").fetchall())

    async def ping_async(self) -> None:
        await asyncio.to_thread(self.ping)

    def _inspect_rows(self, where: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        sql = (
            "SELECT idempotency_key, status, owner, payload_hash, expiry, lease_expiry, response "
            f'FROM "{self.table}" WHERE {where}'
        )
        rows = self._run(lambda conn: conn.execute(sql, params).fetchall())
        return [describe_record(_decode(row[0], row[1:])) for row in rows]

    def inspect_record(self, storage_key: str) -> dict[str, Any] | None:
        found = self._inspect_rows("idempotency_key = :key", {"key": storage_key})
        return found[0] if found else None

    def list_records(self, prefix: str = "", limit: int = 100) -> list[dict[str, Any]]:
        where = "idempotency_key LIKE :pattern ESCAPE '\\' ORDER BY idempotency_key LIMIT :limit"
        return self._inspect_rows(
            where, {"pattern": like_prefix(prefix), "limit": check_limit(limit)}
        )

    def invalidate_record(self, storage_key: str, force: bool = False) -> bool:
        params = {"key": storage_key, "now": time.time(), "force": int(force)}
        delete = (
            f'DELETE FROM "{self.table}" WHERE idempotency_key = :key AND '
            f"(status = '{STATUS_COMPLETED}' OR live_until < :now OR :force)"
        )
        if self._run(functools.partial(self._changes, sql=delete, params=params)):
            return True
        live = f'SELECT status FROM "{self.table}" WHERE idempotency_key = :key AND {_LIVE}'
        if self._run(lambda conn: conn.execute(live, params).fetchall()):
            raise IdempotencyAlreadyInProgressError(INVALIDATE_REFUSED.format(key=storage_key))
        return False

    def record_counts(self) -> dict[str, int]:
        """Records by status; rows past their life (awaiting ``purge_expired``) as "EXPIRED"."""
        sql = (
            f"SELECT CASE WHEN {_LIVE} THEN status ELSE 'EXPIRED' END AS s, count(*) "
            f'FROM "{self.table}" GROUP BY s'
        )
        rows = self._run(lambda conn: conn.execute(sql, {"now": time.time()}).fetchall())
        return {str(status): int(n) for status, n in rows}


def _before_fork() -> None:
    """Close every idle connection of this process before a fork (waiting a little for the
    statements in flight), and keep new ones from opening until the fork is done.

    SQLite's unix VFS keeps its POSIX-lock bookkeeping once per file per process; a child that
    inherits an open connection shares the parent's record, so its own connections take no
    real lock, and the parent's later last close deletes the ``-wal`` and ``-shm`` files under
    it (or a fork during a write leaves the child locked out for good). With no connection
    open at fork time the child starts clean. A connection still busy after ``_FORK_WAIT``
    seconds is inherited; the child then refuses to use that file (``_tainted``)."""
    deadline = time.monotonic() + _FORK_WAIT
    held: list[threading.Lock] = []
    _fork_busy.clear()
    for layer in list(_layers):
        layer._lock.acquire()
        held.append(layer._lock)
        for slot in list(layer._slots):
            if slot.conn is None:
                continue
            if slot.busy.acquire(timeout=max(0.0, deadline - time.monotonic())):
                held.append(slot.busy)
                if slot.pid == os.getpid():
                    slot.release()  # closed: its thread reopens on next use
            else:  # still busy: the child will inherit it open
                _fork_busy.add(layer._abspath)
    _fork_held[:] = held


#: The locks ``_before_fork`` holds across the fork (released in the parent), and the files
#: of the connections it could not close (the child's slots of other threads may already be
#: gone when its hook runs, so the parent notes them before the fork).
_fork_held: list[threading.Lock] = []
_fork_busy: set[str] = set()


def _after_fork_in_parent() -> None:
    held, _fork_held[:] = list(_fork_held), []
    _fork_busy.clear()
    for lock in reversed(held):
        lock.release()


def _after_fork_in_child() -> None:
    """In a forked child: a fresh lock (one held by a parent thread at fork time would never
    be released here), and the parent's connections parked, so that neither use nor garbage
    collection (when their threads' objects go) ever runs SQLite on them in the child. The
    worker threads are replaced on first use (pid check)."""
    _fork_held.clear()
    _tainted.update(_fork_busy)
    _fork_busy.clear()
    for layer in list(_layers):
        layer._lock = threading.Lock()
        for slot in list(layer._slots):
            slot.busy = threading.Lock()  # possibly held across the fork by the hook
            slot.release()  # another pid now: parked, not closed


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


async def _settled(future: Future[Any]) -> None:
    """Wait until a started job is done, through any number of further cancellations."""
    while not future.done():
        try:
            await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            continue
        except Exception:  # the job failed: settled too
            break


__all__ = ["SQLitePersistenceLayer"]
