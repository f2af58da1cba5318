"""PostgreSQL persistence on psycopg 3: one class for sync callers (WSGI) and asyncio (ASGI).

Statements, one round trip each (autocommit: no BEGIN/COMMIT around them):

- claim-or-read: one ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` (see ``_CLAIM``);
- lookup: one ``SELECT``;
- complete, renew: one fenced upsert; release: one fenced ``DELETE`` that also reports
  whether another owner holds the key.

Time is the database's: every statement passes durations and compares with
``clock_timestamp()`` read after any row-lock wait, so the app servers' clocks never decide
whether a lease or a record has run out, and a claim that waited is not born expired. Row-lock
waits are bounded by ``lock_timeout`` (a store error, not a hang).
Records read back carry app-clock timestamps computed from the time the database
says is left (``now + remaining``), which is what ``DataRecord.is_expired`` compares with.

Connections come from psycopg_pool pools given by the caller (``pool=`` / ``async_pool=``), or,
with ``dsn=``, from the layer's own small sets of idle connections (no threads, fork-safe, and
the asyncio ones serve any event loop).
A connection whose statement was interrupted by anything (``CancelledError``,
``KeyboardInterrupt``, a signal handler's exception) is closed before it goes back (a pool
discards closed ones): it can never be reused with a half-read reply or an open transaction.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import threading
import time
import weakref
from collections.abc import Generator, Iterator
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from typing import TYPE_CHECKING, Any

from .._forksafe import renew_after_fork
from ..exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyConfigurationError,
    IdempotencyInvalidStatusError,
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyOwnershipError,
    IdempotencyPersistenceLayerError,
)
from .base import (
    INVALIDATE_REFUSED,
    STATUS_COMPLETED,
    STATUS_INPROGRESS,
    BasePersistenceLayer,
    DataRecord,
    check_limit,
    describe_record,
    like_prefix,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import psycopg
    import psycopg_pool

_EXTRA = "PostgresPersistenceLayer needs psycopg 3: pip install 'idempotent-middleware[postgres]'"


def _import_psycopg() -> tuple[Any, Any]:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:  # the package imports without the postgres extra
        raise ImportError(_EXTRA) from exc
    return psycopg, psycopg_pool


# --- SQL ----------------------------------------------------------------------------------------
# {t} is the (schema-qualified) table, quoted by psycopg.sql. Time is clock_timestamp(): the
# moment the expression is evaluated. Not statement_timestamp() (or now()): those are fixed
# when the statement starts, before ON CONFLICT or UPDATE may wait for a row lock another
# transaction holds (a business transaction holding the marker, say); a claim written after a
# wait longer than its lease would be born expired and a later claimer would win as well.
# SET and WHERE of DO UPDATE run after the lock is taken, so their clock reads are current.
_NOW = "clock_timestamp()"
_COLUMNS = "status, owner, payload_hash, response_data, lease_expires_at, expires_at"
_DATA = ("status", "owner", "payload_hash", "response_data")
_LEASE = f"{_NOW} + make_interval(secs => %(lease)s)"
_TTL = f"{_NOW} + make_interval(secs => %(ttl)s)"
#: What a read returns: the row, with its times as seconds left by the database's clock.
_RETURNING = (
    "status, owner, payload_hash, response_data, "
    f"extract(epoch FROM lease_expires_at - {_NOW})::float8, "
    f"extract(epoch FROM expires_at - {_NOW})::float8"
)
# The INSERT's VALUES are evaluated before the unique index check, which may wait for a
# concurrent inserter's uncommitted row: a fresh row can start its lease early by that wait
# (bounded by lock_timeout). RETURNING reports it, and ``_claimed`` refuses a claim whose lease
# is already over (the caller gets a store error, nothing runs under it).
_VALUES = f"(%(key)s, %(status)s, %(owner)s, %(hash)s, %(response)s, {_LEASE}, {_TTL})"
_INSERT = f"INSERT INTO {{t}} AS r (idempotency_key, {_COLUMNS}) VALUES {_VALUES}"
#: The values a winning upsert writes, times read after the row lock.
_NEW = {**{c: f"EXCLUDED.{c}" for c in _DATA}, "lease_expires_at": _LEASE, "expires_at": _TTL}


def _set_all() -> str:
    return ", ".join(f"{c} = {v}" for c, v in _NEW.items())


def _replace_columns_when(condition: str) -> str:
    """Every column from one evaluation of ``condition`` (a volatile clock read per column
    could split the row between two owners at the boundary)."""
    columns = ", ".join(_NEW)
    picks = ", ".join(f"CASE WHEN w.won THEN {v} ELSE r.{c} END" for c, v in _NEW.items())
    return f"({columns}) = (SELECT {picks} FROM (SELECT {condition} AS won) AS w)"


# Claim or read, in one statement. Why it cannot miss a row a concurrent claimer just inserted
# (READ COMMITTED): ON CONFLICT does not look at this statement's snapshot. The unique index
# decides; if another transaction inserted the key and has not committed, this INSERT waits for
# it, and then DO UPDATE locks the newest committed version of the row and evaluates against
# it, whatever the snapshot holds. Because the DO UPDATE always fires (it rewrites the row with
# its own values unless the row is expired), RETURNING always gives that newest version: our
# claim (owner = ours) or the live record that beat us. A plain "DO NOTHING, then SELECT" in
# one statement would read the snapshot, taken before the other claimer committed, and find
# nothing. The cost: a conflicting claim (a replay) writes a row version; no indexed column
# changes, so it is a HOT update.
_CLAIM = (
    f"{_INSERT} ON CONFLICT (idempotency_key) DO UPDATE SET "
    + _replace_columns_when(f"r.live_until <= {_NOW}")
    + f" RETURNING {_RETURNING}"
)
_GET = f"SELECT {_RETURNING} FROM {{t}} WHERE idempotency_key = %(key)s AND live_until > {_NOW}"
# Complete: this owner's row (claim or marker), or a row nobody holds any more.
_COMPLETE = (
    f"{_INSERT} ON CONFLICT (idempotency_key) DO UPDATE SET {_set_all()}"
    f" WHERE r.owner = EXCLUDED.owner OR r.live_until <= {_NOW} RETURNING 1"
)
# Renew (contract C1): this owner's in-progress claim, or a key nobody holds any more. The
# owner's own live "executed" marker (its transaction committed it) counts as renewed and is
# left as it is: the key is still this execution's, which is all a renewal has to establish.
_OWN_MARKER = (
    f"r.owner = EXCLUDED.owner AND r.status = '{STATUS_COMPLETED}' AND r.response_data IS NULL"
)
_RENEW = (
    f"{_INSERT} ON CONFLICT (idempotency_key) DO UPDATE SET "
    + _replace_columns_when(f"NOT ({_OWN_MARKER} AND r.live_until > {_NOW})")
    + f" WHERE (r.owner = EXCLUDED.owner AND r.status = '{STATUS_INPROGRESS}')"
    f" OR ({_OWN_MARKER}) OR r.live_until <= {_NOW} RETURNING 1"
)
# Release: this owner's row, unless it is the "executed, outcome unknown" marker committed by
# the handler's own transaction (``record_executed``): once that committed, the handler's
# effects are in the database and the key must never free for a second run. The second column
# says whether another owner holds the key (the fence).
_RELEASE = (
    f"WITH gone AS (DELETE FROM {{t}} WHERE idempotency_key = %(key)s AND owner = %(owner)s"
    f" AND NOT (status = '{STATUS_COMPLETED}' AND response_data IS NULL) RETURNING 1) "
    f"SELECT EXISTS (SELECT 1 FROM {{t}} WHERE idempotency_key = %(key)s"
    f" AND owner <> %(owner)s AND live_until > {_NOW})"
)
# The marker written on the caller's connection, inside the business transaction. Only over
# this owner's in-progress claim, or its own marker (recorded again, in the same or a later
# transaction of the handler: idempotent): a lost lease makes it fail, and the business rolls
# back.
_EXECUTED = (
    f"UPDATE {{t}} SET status = '{STATUS_COMPLETED}', response_data = NULL,"
    f" lease_expires_at = NULL, expires_at = {_TTL}"
    f" WHERE idempotency_key = %(key)s AND owner = %(owner)s AND (status = '{STATUS_INPROGRESS}'"
    f" OR (status = '{STATUS_COMPLETED}' AND response_data IS NULL))"
)
_PURGE = (
    f"DELETE FROM {{t}} WHERE idempotency_key IN (SELECT idempotency_key FROM {{t}}"
    f" WHERE live_until <= {_NOW} ORDER BY live_until LIMIT %(batch)s FOR UPDATE SKIP LOCKED)"
)


def _params(record: DataRecord) -> dict[str, Any]:
    """The statement parameters for ``record``: its times as durations from now."""
    if record.status not in (STATUS_INPROGRESS, STATUS_COMPLETED):  # assigned after construction
        raise IdempotencyInvalidStatusError(f"unknown idempotency record status {record.status!r}")
    now = time.time()
    ttl = (record.expiry_timestamp or now) - now
    lease = (
        record.in_progress_expiry_timestamp / 1000 - now
        if record.in_progress_expiry_timestamp is not None and record.status == STATUS_INPROGRESS
        else None  # a completed row has no lease (NULL)
    )
    return {
        "key": record.idempotency_key,
        "status": record.status,
        "owner": record.owner,
        "hash": record.payload_hash,
        "response": record.response_data,
        "lease": lease,
        "ttl": ttl,
    }


def _record(key: str, row: tuple[Any, ...]) -> DataRecord:
    status, owner, payload_hash, response, lease_left, ttl_left = row
    now = time.time()
    return DataRecord(
        idempotency_key=key,
        status=status,
        expiry_timestamp=now + ttl_left,
        in_progress_expiry_timestamp=(
            int((now + lease_left) * 1000)
            if status == STATUS_INPROGRESS and lease_left is not None
            else None
        ),
        response_data=None if response is None else bytes(response),
        payload_hash=payload_hash,
        owner=bytes(owner),
    )


class PostgresPersistenceLayer(BasePersistenceLayer):
    """Records in one PostgreSQL table (``table``, in ``schema`` or the search path).

    Pass ``dsn=`` (the layer keeps idle blocking connections, and asyncio connections that
    serve any event loop: psycopg's asyncio connections wait on the running loop, they are not
    bound to one, so ``asyncio.run`` per job works) or ready psycopg_pool pools: ``pool=``
    (``ConnectionPool``) and/or ``async_pool=`` (``AsyncConnectionPool``). Connections of
    pools you pass should be ``autocommit=True`` (``kwargs={"autocommit": True}``); others are
    switched to autocommit while the layer uses them. Create the table with
    ``create_schema()`` or the shipped ``sql/postgres.sql``.
    """

    kind = "postgres"

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: psycopg_pool.ConnectionPool[Any] | None = None,
        async_pool: psycopg_pool.AsyncConnectionPool[Any] | None = None,
        table: str = "idempotency_records",
        schema: str | None = None,
        max_size: int = 10,
        timeout: float = 5.0,
        lock_timeout: float = 5.0,
    ) -> None:
        super().__init__()
        psycopg, _ = _import_psycopg()
        if dsn is None and pool is None and async_pool is None:
            raise ValueError("pass dsn=, pool= or async_pool=")
        if not lock_timeout > 0:
            raise ValueError("lock_timeout must be positive")
        self.lock_timeout = lock_timeout
        self.dsn = dsn
        self.table = table
        self.schema = schema
        self._sync_pool = pool
        self._async_pool = async_pool
        # Every statement of the layer's own connections waits at most lock_timeout for a row
        # lock (a business transaction holding the marker): LockNotAvailable, a typed error
        # (a claim: in progress; renew, complete, release: a store error), instead of a
        # request hanging for the length of someone's transaction. Set as a
        # connection option, so no extra round trip; any options of the DSN are kept.
        options = f"-c lock_timeout={max(1, round(lock_timeout * 1000))}"
        given = psycopg.conninfo.conninfo_to_dict(dsn).get("options") if dsn else None
        if given:
            options = f"{given} {options}"
        tcp = _tcp_options(psycopg, dsn)
        self._connections = _SyncConnections(dsn, max_size, timeout, options, tcp)
        self._async_connections = _AsyncConnections(dsn, max_size, timeout, options, tcp)
        sql = psycopg.sql
        self._ident = sql.Identifier(schema, table) if schema is not None else sql.Identifier(table)
        self._sql = {
            name: sql.SQL(text).format(t=self._ident)
            for name, text in (
                ("claim", _CLAIM),
                ("get", _GET),
                ("complete", _COMPLETE),
                ("renew", _RENEW),
                ("release", _RELEASE),
                ("executed", _EXECUTED),
                ("purge", _PURGE),
            )
        }

    # --- Schema -------------------------------------------------------------------------------
    def schema_sql(self) -> Any:
        """The shipped ``sql/postgres.sql`` with this layer's table and index names."""
        psycopg, _ = _import_psycopg()
        sql = psycopg.sql
        text = (resources.files(__package__) / "sql" / "postgres.sql").read_text()
        # The file names the default table and index in double quotes, nowhere else; replaced
        # by the properly quoted identifiers (the index lives in the table's schema).
        text = text.replace("{", "{{").replace("}", "}}")
        text = text.replace('"idempotency_records_live_until_idx"', "{index}")
        text = text.replace('"idempotency_records"', "{table}")
        index = sql.Identifier(f"{self.table}_live_until_idx"[:63])
        statements = [sql.SQL(text).format(table=self._ident, index=index)]
        if self.schema is not None:
            create = sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
            statements.insert(0, create)
        return sql.SQL(";\n").join(statements)

    def create_schema(self) -> None:
        """Create the table and its index if they are missing (idempotent)."""
        with self._connection() as conn:
            conn.execute(self.schema_sql())

    # --- Pools --------------------------------------------------------------------------------
    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        if self._sync_pool is None:
            if self.dsn is None:
                raise TypeError("this layer has only an async pool; pass dsn= or pool=")
            with self._connections.connection() as conn:
                yield conn
            return
        with self._sync_pool.connection() as conn:
            restore = not conn.autocommit
            if restore:
                conn.autocommit = True
            try:
                yield conn
            except BaseException:
                # Interrupted or failed mid-statement: the reply may be half read, so the
                # connection is closed and the pool replaces it (never reused out of step).
                conn.close()
                raise
            if restore:
                conn.autocommit = False

    @asynccontextmanager
    async def _async_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._async_pool is None:
            async with self._async_connections.connection() as conn:
                yield conn
            return
        async with self._async_pool.connection() as conn:
            restore = not conn.autocommit
            if restore:
                await conn.set_autocommit(True)
            try:
                yield conn
            except BaseException:
                await conn.close()  # see _connection
                raise
            if restore:
                await conn.set_autocommit(False)

    def _fetch(self, name: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        try:
            with self._connection() as conn:
                row: tuple[Any, ...] | None = conn.execute(self._sql[name], params).fetchone()
                return row
        except Exception as exc:
            raise _store_error(name, exc, params) from exc

    async def _fetch_async(self, name: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        if self._async_pool is None and self.dsn is None:
            return await asyncio.to_thread(self._fetch, name, params)  # only a sync pool
        try:
            async with self._async_connection() as conn:
                cursor = await conn.execute(self._sql[name], params)
                row: tuple[Any, ...] | None = await cursor.fetchone()
                return row
        except Exception as exc:
            raise _store_error(name, exc, params) from exc

    # --- The operations: the statement's result read once, for both drivers ----------------
    @staticmethod
    def _claimed(record: DataRecord, row: tuple[Any, ...] | None, lease: float | None) -> None:
        if row is None:  # pragma: no cover - the upsert always returns its row
            raise IdempotencyItemAlreadyExistsError(None)
        existing = _record(record.idempotency_key, row)
        if existing.owner != record.owner:
            raise IdempotencyItemAlreadyExistsError(existing)
        lease_left = row[4]
        if lease is not None and lease > 0 and lease_left is not None and lease_left <= 0:
            # Won only after waiting longer than the lease (see _VALUES): the row is already
            # reclaimable, so running the handler under it could run it twice.
            raise IdempotencyPersistenceLayerError(
                f"claim of {record.idempotency_key!r} waited past its lease; not run"
            )

    @staticmethod
    def _found(key: str, row: tuple[Any, ...] | None) -> DataRecord:
        if row is None:
            raise IdempotencyItemNotFoundError(key)
        return _record(key, row)

    @staticmethod
    def _fenced(record: DataRecord, row: tuple[Any, ...] | None) -> None:
        if row is None:
            raise IdempotencyOwnershipError(record.idempotency_key)

    @staticmethod
    def _released(record: DataRecord, row: tuple[Any, ...] | None) -> None:
        if row is not None and row[0]:
            raise IdempotencyOwnershipError(record.idempotency_key)

    def _get_record(self, idempotency_key: str) -> DataRecord:
        return self._found(idempotency_key, self._fetch("get", {"key": idempotency_key}))

    def _put_record(self, data_record: DataRecord) -> None:
        params = _params(data_record)
        self._claimed(data_record, self._fetch("claim", params), params["lease"])

    def _update_record(self, data_record: DataRecord) -> None:
        self._fenced(data_record, self._fetch("complete", _params(data_record)))

    def _delete_record(self, data_record: DataRecord) -> None:
        params = {"key": data_record.idempotency_key, "owner": data_record.owner}
        self._released(data_record, self._fetch("release", params))

    def _renew_lease(self, data_record: DataRecord) -> None:
        self._fenced(data_record, self._fetch("renew", _params(data_record)))

    async def _get_record_async(self, idempotency_key: str) -> DataRecord:
        row = await self._fetch_async("get", {"key": idempotency_key})
        return self._found(idempotency_key, row)

    async def _put_record_async(self, data_record: DataRecord) -> None:
        params = _params(data_record)
        self._claimed(data_record, await self._fetch_async("claim", params), params["lease"])

    async def _update_record_async(self, data_record: DataRecord) -> None:
        self._fenced(data_record, await self._fetch_async("complete", _params(data_record)))

    async def _delete_record_async(self, data_record: DataRecord) -> None:
        params = {"key": data_record.idempotency_key, "owner": data_record.owner}
        self._released(data_record, await self._fetch_async("release", params))

    async def _renew_lease_async(self, data_record: DataRecord) -> None:
        self._fenced(data_record, await self._fetch_async("renew", _params(data_record)))

    # --- In the caller's transaction ------------------------------------------------------------
    def _executed_params(self, claim: DataRecord, expires_after_seconds: float) -> dict[str, Any]:
        return {"key": claim.idempotency_key, "owner": claim.owner, "ttl": expires_after_seconds}

    def record_executed(
        self, connection: Any, claim: DataRecord, expires_after_seconds: float
    ) -> None:
        """Mark ``claim`` "executed, outcome unknown" on the caller's psycopg ``connection``
        (in its transaction, so it commits or rolls back with the business writes). Calling it
        again for the same claim (same or a later transaction) is a no-op.

        ``IdempotencyOwnershipError`` when this execution no longer holds its claim;
        ``IdempotencyConfigurationError`` on an autocommit connection outside a transaction
        (the marker would commit alone, before the business writes: a later rollback would
        leave the key blocked though nothing happened) or when the table is not reachable on
        that connection (another database, another search_path); another typed store error
        for any other database failure. After any of these, roll the transaction back.
        """
        psycopg, _ = _import_psycopg()
        _require_transaction(psycopg, connection, claim)
        try:
            cursor = connection.execute(
                self._sql["executed"], self._executed_params(claim, expires_after_seconds)
            )
        except psycopg.Error as exc:
            raise _marker_error(psycopg, exc) from exc
        if cursor.rowcount != 1:
            raise IdempotencyOwnershipError(claim.idempotency_key)

    async def record_executed_async(
        self, connection: Any, claim: DataRecord, expires_after_seconds: float
    ) -> None:
        """``record_executed`` on a psycopg ``AsyncConnection``."""
        psycopg, _ = _import_psycopg()
        _require_transaction(psycopg, connection, claim)
        try:
            cursor = await connection.execute(
                self._sql["executed"], self._executed_params(claim, expires_after_seconds)
            )
        except psycopg.Error as exc:
            raise _marker_error(psycopg, exc) from exc
        if cursor.rowcount != 1:
            raise IdempotencyOwnershipError(claim.idempotency_key)

    # --- Maintenance --------------------------------------------------------------------------
    def purge_expired(self, batch: int = 1000, max_batches: int | None = None) -> int:
        """Delete expired rows, ``batch`` at a time (each batch its own short statement, so
        no long lock and no huge transaction); return how many went. Rows locked by a live
        transaction are skipped, not waited for."""
        if batch <= 0:
            raise ValueError("batch must be positive")
        total = 0
        done = 0
        while max_batches is None or done < max_batches:
            try:
                with self._connection() as conn:
                    deleted = conn.execute(self._sql["purge"], {"batch": batch}).rowcount
            except Exception as exc:
                raise _store_error("purge", exc) from exc
            total += deleted
            done += 1
            if deleted < batch:
                break
        return total

    def close(self) -> None:
        """Close the idle connections this layer made (it reconnects if used again); pools
        passed in stay yours to close."""
        self._connections.close()
        self._async_connections.close()

    async def aclose(self) -> None:
        """Close the idle asyncio connections made from ``dsn=`` (they reconnect if used)."""
        self._async_connections.close()

    # --- Readiness and operator inspection ------------------------------------------------------
    def _query(self, what: str, query: Any, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        try:
            with self._connection() as conn:
                rows: list[tuple[Any, ...]] = conn.execute(query, params).fetchall()
                return rows
        except Exception as exc:
            raise _store_error(what, exc, params) from exc

    def ping(self) -> None:
        """``SELECT 1`` (a readiness probe); a store error if the server does not answer
        within ``timeout`` (a stalled server accepts the bytes and never replies)."""
        try:
            with self._connection() as conn:
                _wait_sync(_select_one(conn.pgconn), conn.pgconn.socket, self._connections.timeout)
        except Exception as exc:
            raise _store_error("ping", exc) from exc

    async def ping_async(self) -> None:
        if self._async_pool is None and self.dsn is None:
            await asyncio.to_thread(self.ping)
            return
        try:
            async with self._async_connection() as conn:
                gen = _select_one(conn.pgconn)
                await _wait_async(gen, conn.pgconn.socket, self._connections.timeout)
        except Exception as exc:
            raise _store_error("ping", exc) from exc

    def _inspect_rows(self, where: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        sql = _import_psycopg()[0].sql
        query = sql.SQL(f"SELECT idempotency_key, {_RETURNING} FROM {{t}} WHERE {where}").format(
            t=self._ident
        )
        rows = self._query("inspect", query, params)
        return [describe_record(_record(row[0], row[1:])) for row in rows]

    def inspect_record(self, storage_key: str) -> dict[str, Any] | None:
        found = self._inspect_rows("idempotency_key = %(key)s", {"key": storage_key})
        return found[0] if found else None

    def list_records(self, prefix: str = "", limit: int = 100) -> list[dict[str, Any]]:
        where = (
            "idempotency_key LIKE %(pattern)s ESCAPE '\\' ORDER BY idempotency_key LIMIT %(limit)s"
        )
        return self._inspect_rows(
            where, {"pattern": like_prefix(prefix), "limit": check_limit(limit)}
        )

    def invalidate_record(self, storage_key: str, force: bool = False) -> bool:
        """One statement: the DELETE, and the row as it was before it (the CTE's snapshot)."""
        sql = _import_psycopg()[0].sql
        query = sql.SQL(
            f"WITH gone AS (DELETE FROM {{t}} WHERE idempotency_key = %(key)s AND "
            f"(status = '{STATUS_COMPLETED}' OR live_until <= {_NOW} OR %(force)s) RETURNING 1) "
            f"SELECT (SELECT count(*) FROM gone), EXISTS (SELECT 1 FROM {{t}} "
            f"WHERE idempotency_key = %(key)s AND live_until > {_NOW})"
        ).format(t=self._ident)
        ((deleted, live),) = self._query("invalidate", query, {"key": storage_key, "force": force})
        if deleted:
            return True
        if live:
            raise IdempotencyAlreadyInProgressError(INVALIDATE_REFUSED.format(key=storage_key))
        return False

    def record_counts(self) -> dict[str, int]:
        """Records by status; rows past their life (awaiting ``purge_expired``) as "EXPIRED"."""
        sql = _import_psycopg()[0].sql
        query = sql.SQL(
            f"SELECT CASE WHEN live_until > {_NOW} THEN status ELSE 'EXPIRED' END AS s, count(*) "
            "FROM {t} GROUP BY s"
        ).format(t=self._ident)
        return {str(s): int(n) for s, n in self._query("stats", query, {})}


def _fresh_slots(pool: _SyncConnections) -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(pool.max_size)


class _SyncConnections:
    """Idle blocking connections, at most ``max_size`` in use at once (``dsn=``).

    Not a psycopg_pool ``ConnectionPool``: that one runs threads, which do not survive
    ``fork`` (``gunicorn --preload``), and a pool dropped unclosed is collected in one of its
    own threads. Here an idle connection is a socket and nothing else. A forked child never
    touches the parent's connections: it forgets them without closing them (closing would
    send the parent's server a goodbye on the shared socket) and opens its own.
    """

    def __init__(
        self, dsn: str | None, max_size: int, timeout: float, options: str, tcp: dict[str, str]
    ) -> None:
        self.dsn = dsn
        self.options = options
        self.tcp = tcp
        self.max_size = max_size
        self.timeout = timeout
        self.idle: list[Any] = []
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(max_size)
        # A child has none of the parent's connections in use: all slots free again.
        renew_after_fork(self, "lock")
        renew_after_fork(self, "slots", factory=_fresh_slots)
        self.pid = os.getpid()
        #: A parent's connections in a forked child: kept referenced, never closed or used.
        self.inherited: list[Any] = []

    def _take(self) -> Any:
        with self.lock:
            if self.pid != os.getpid():
                self.inherited.extend(self.idle)
                self.idle = []
                self.pid = os.getpid()
            while self.idle:
                conn = self.idle.pop()
                if not conn.closed:
                    return conn
        return None

    @contextmanager
    def connection(self) -> Iterator[Any]:
        psycopg, _ = _import_psycopg()
        if not self.slots.acquire(timeout=self.timeout):
            raise IdempotencyPersistenceLayerError(
                f"no PostgreSQL connection free within {self.timeout}s"
            )
        try:
            conn = self._take()
            if conn is None:
                conn = psycopg.connect(
                    self.dsn,
                    autocommit=True,
                    connect_timeout=max(1, int(self.timeout)),
                    options=self.options,
                    **self.tcp,
                )
            try:
                yield conn
            except BaseException:
                # Interrupted or failed mid-statement (a signal handler's exception,
                # KeyboardInterrupt): the reply may be half read, so the connection is
                # closed, never handed to the next caller.
                conn.close()
                raise
            idle = conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
            with self.lock:
                keep = idle and len(self.idle) < self.max_size and self.pid == os.getpid()
                if keep:
                    self.idle.append(conn)
            if not keep:
                conn.close()
        finally:
            self.slots.release()

    def close(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
            forked = self.pid != os.getpid()
        if forked:
            self.inherited.extend(idle)
            return
        for conn in idle:
            conn.close()


class _AsyncConnections:
    """Idle asyncio connections shared by every event loop, at most ``max_size`` in use per loop.

    Not a psycopg_pool ``AsyncConnectionPool``: that one runs worker tasks on the loop that
    opened it, so it dies with that loop (``asyncio.run`` per job) and leaves its tasks behind.
    A psycopg ``AsyncConnection`` waits on whatever loop is running; one in use by nobody has
    no loop state at all, so the idle ones can serve the next loop.
    """

    def __init__(
        self, dsn: str | None, max_size: int, timeout: float, options: str, tcp: dict[str, str]
    ) -> None:
        self.dsn = dsn
        self.options = options
        self.tcp = tcp
        self.max_size = max_size
        self.timeout = timeout
        self.idle: list[Any] = []
        self.limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self.lock = threading.Lock()  # the idle list is shared by the loops' threads
        renew_after_fork(self, "lock")

    def _limit(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        limit = self.limits.get(loop)
        if limit is None:
            limit = self.limits[loop] = asyncio.Semaphore(self.max_size)
        return limit

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        psycopg, _ = _import_psycopg()
        limit = self._limit()
        try:
            await asyncio.wait_for(limit.acquire(), self.timeout)
        except asyncio.TimeoutError:
            raise IdempotencyPersistenceLayerError(
                f"no PostgreSQL connection free within {self.timeout}s"
            ) from None
        try:
            conn = None
            with self.lock:
                while self.idle and conn is None:
                    candidate = self.idle.pop()
                    if not candidate.closed:
                        conn = candidate
            if conn is None:
                conn = await psycopg.AsyncConnection.connect(
                    self.dsn,
                    autocommit=True,
                    connect_timeout=max(1, int(self.timeout)),
                    options=self.options,
                    **self.tcp,
                )
            try:
                yield conn
            except BaseException:
                # Interrupted or failed mid-statement (CancelledError included): the reply may
                # be half read, so the connection is dropped, never handed to the next caller.
                conn.pgconn.finish()
                raise
            idle = conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
            with self.lock:
                keep = idle and len(self.idle) < self.max_size
                if keep:
                    self.idle.append(conn)
            if not keep:
                conn.pgconn.finish()
        finally:
            limit.release()

    def close(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for conn in idle:
            conn.pgconn.finish()  # no await needed: nothing is in flight on an idle connection


def _require_transaction(psycopg: Any, connection: Any, claim: DataRecord) -> None:
    """The marker must share the business writes' transaction: refuse an autocommit
    connection outside an explicit ``transaction()`` block (psycopg's transaction status)."""
    idle = connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    if connection.autocommit and idle:
        raise IdempotencyConfigurationError(
            f"record_executed({claim.idempotency_key!r}) needs the business transaction: the "
            "connection is in autocommit mode outside a transaction() block"
        )


def _marker_error(psycopg: Any, exc: Exception) -> Exception:
    """A typed error for the marker's statement on the caller's connection. A missing table
    or schema, or no privilege on it, is the caller's setup (another database or
    search_path); anything else is a store failure."""
    errors = psycopg.errors
    if isinstance(
        exc, (errors.UndefinedTable, errors.InvalidSchemaName, errors.InsufficientPrivilege)
    ):
        return IdempotencyConfigurationError(
            f"record_executed: the idempotency table is not usable on this connection "
            f"({type(exc).__name__}: {exc}); roll the transaction back"
        )
    return _store_error("record_executed", exc)


#: libpq TCP options of the layer's own connections (those the DSN does not set): a server
#: gone without a reset (a partition, a dead host) fails the statement waiting on it after
#: about 25 s, idle (keepalives) or with data unacknowledged (tcp_user_timeout, in ms,
#: libpq 12+), instead of the kernel's default of hours. Ignored on Unix sockets.
_TCP_OPTIONS = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "25000",
}


def _tcp_options(psycopg: Any, dsn: str | None) -> dict[str, str]:
    given = psycopg.conninfo.conninfo_to_dict(dsn) if dsn else {}
    tcp = {name: value for name, value in _TCP_OPTIONS.items() if name not in given}
    if psycopg.pq.version() < 120000:
        tcp.pop("tcp_user_timeout", None)
    return tcp


def _select_one(pgconn: Any) -> Generator[bool, None, None]:
    """``SELECT 1`` on libpq's non-blocking calls, I/O-free: yields True to wait until the
    socket is writable, False until readable; raises if the server answered an error."""
    psycopg, _ = _import_psycopg()
    pgconn.send_query(b"SELECT 1")
    while pgconn.flush():
        yield True
    pgconn.consume_input()
    while pgconn.is_busy():
        yield False
        pgconn.consume_input()
    error = None
    while (result := pgconn.get_result()) is not None:
        if error is None and result.status != psycopg.pq.ExecStatus.TUPLES_OK:
            error = result.error_message.decode(errors="replace").strip() or "no answer"
    if error is not None:
        raise psycopg.OperationalError(error)


def _stalled(seconds: float) -> TimeoutError:
    return TimeoutError(f"PostgreSQL did not answer SELECT 1 within {seconds}s")


def _wait_sync(gen: Generator[bool, None, None], fd: int, seconds: float) -> None:
    """Drive ``gen`` until it finishes, at most ``seconds`` in all (the caller then drops the
    connection: a reply may still come)."""
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as selector:
        for write in gen:
            event = selectors.EVENT_WRITE if write else selectors.EVENT_READ
            selector.register(fd, event)
            ready = selector.select(max(0.0, deadline - time.monotonic()))
            selector.unregister(fd)
            if not ready:
                raise _stalled(seconds)


async def _wait_async(gen: Generator[bool, None, None], fd: int, seconds: float) -> None:
    """As ``_wait_sync`` on the running loop (psycopg's asyncio needs a selector loop)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    for write in gen:
        ready: asyncio.Future[None] = loop.create_future()

        def wake(ready: asyncio.Future[None] = ready) -> None:
            if not ready.done():
                ready.set_result(None)

        (loop.add_writer if write else loop.add_reader)(fd, wake)
        try:
            await asyncio.wait_for(ready, max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise _stalled(seconds) from None
        finally:
            (loop.remove_writer if write else loop.remove_reader)(fd)


def _store_error(what: str, exc: Exception, params: dict[str, Any] | None = None) -> Exception:
    if isinstance(exc, (IdempotencyPersistenceLayerError, IdempotencyConfigurationError)):
        return exc
    if what == "claim" and isinstance(exc, _import_psycopg()[0].errors.LockNotAvailable):
        # The row is locked by a live transaction that wrote it (a handler's business
        # transaction holding its marker): the key is held, the store is up. In progress (409,
        # retry later), not an outage: with fail_open an outage would run the handler again.
        key = params["key"] if params else "?"
        return IdempotencyAlreadyInProgressError(
            f"the record of {key!r} stayed locked past lock_timeout (a transaction holds it)"
        )
    return IdempotencyPersistenceLayerError(f"{what} failed: {type(exc).__name__}: {exc}")


__all__ = ["PostgresPersistenceLayer"]
