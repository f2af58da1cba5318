-- Schema of PostgresPersistenceLayer (idempotent-middleware). Idempotent: safe to run again.
-- create_schema() runs this file with the table (and index) names of the layer substituted;
-- run it by hand (psql -f) for the default name "idempotency_records".
--
-- One row per idempotency key. Times are the database's own clock (clock_timestamp()):
-- the layer passes durations, never an application server's timestamps.
CREATE TABLE IF NOT EXISTS "idempotency_records" (
    -- "{scope}#{hash}" (or "{METHOD} {path}#{hash}" for HTTP)
    idempotency_key  text        PRIMARY KEY,
    status           text        NOT NULL CHECK (status IN ('INPROGRESS', 'COMPLETED')),
    -- 16 random bytes naming the execution that claimed the key: the fence for every write
    owner            bytea       NOT NULL,
    -- fingerprint of the request (same key, other payload: 422)
    payload_hash     text        NOT NULL,
    -- the stored result; NULL on a claim and on an "executed, outcome unknown" marker
    response_data    bytea,
    -- end of an in-progress claim's lease (NULL once completed)
    lease_expires_at timestamptz,
    -- end of the record's time to live
    expires_at       timestamptz NOT NULL,
    -- when the row stops counting: the lease while in progress, the TTL once completed.
    -- An expired row is reclaimable at once and removed by purge_expired().
    live_until       timestamptz GENERATED ALWAYS AS (
        CASE WHEN status = 'INPROGRESS' THEN coalesce(lease_expires_at, expires_at)
             ELSE expires_at END
    ) STORED
);

-- purge_expired() takes the oldest expired rows in bounded batches through this index.
CREATE INDEX IF NOT EXISTS "idempotency_records_live_until_idx"
    ON "idempotency_records" (live_until);
