-- One row per DAG: who may run it now. A holder takes the lease when it has
-- expired (or is its own), which adds one to the token; every commit of a
-- leased run checks, under a row lock in its own transaction, that the
-- token is still its own, so a holder that lost its lease (paused,
-- partitioned) can no longer commit. last_tick_ms is the latest schedule
-- tick claimed with the lease: a tick is claimed once, however many
-- schedulers share the warehouse.
CREATE TABLE cutover_leases (
    dag        VARCHAR(128) NOT NULL PRIMARY KEY,
    holder     VARCHAR(128) NOT NULL,
    token      BIGINT       NOT NULL,
    expires_ms BIGINT       NOT NULL,
    last_tick_ms BIGINT     NOT NULL DEFAULT 0
);
