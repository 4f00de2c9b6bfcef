-- The chunks of backfills: one row per chunk of event time. A worker claims
-- a pending chunk (or one whose claim expired) by taking it with its name,
-- a claim expiry it renews while it runs, and one more attempt; the
-- attempt is its token. Marking the chunk done checks the token, so a
-- worker whose claim was taken over cannot mark it. The backfill key names
-- the DAG, the range and the chunk size, so a rerun finds its chunks.
CREATE TABLE cutover_backfill_chunks (
    backfill   VARCHAR(255) NOT NULL,
    dag        VARCHAR(128) NOT NULL,
    from_ms    BIGINT       NOT NULL,
    until_ms   BIGINT       NOT NULL,
    state      VARCHAR(16)  NOT NULL,
    holder     VARCHAR(128),
    expires_ms BIGINT       NOT NULL DEFAULT 0,
    attempts   BIGINT       NOT NULL DEFAULT 0,
    run_id     VARCHAR(64),
    events     BIGINT       NOT NULL DEFAULT 0,
    done_at    VARCHAR(32),
    error      TEXT,
    PRIMARY KEY (backfill, from_ms)
);
