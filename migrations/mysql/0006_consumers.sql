-- One row per feed consumer process (`cutover consume`), rewritten after
-- every micro-batch: what it has done and how far behind the feed it is.
-- A consumer that was killed keeps state `running` with an old updated_at.
CREATE TABLE cutover_consumers (
    consumer_id    VARCHAR(64)  NOT NULL PRIMARY KEY,
    queue_url      TEXT         NOT NULL,
    host           VARCHAR(255) NOT NULL,
    pid            BIGINT       NOT NULL,
    started_at     VARCHAR(32)  NOT NULL,
    updated_at     VARCHAR(32)  NOT NULL,
    state          VARCHAR(16)  NOT NULL,
    messages       BIGINT       NOT NULL DEFAULT 0,
    redelivered    BIGINT       NOT NULL DEFAULT 0,
    events         BIGINT       NOT NULL DEFAULT 0,
    poison         BIGINT       NOT NULL DEFAULT 0,
    deleted        BIGINT       NOT NULL DEFAULT 0,
    batches        BIGINT       NOT NULL DEFAULT 0,
    failed_batches BIGINT       NOT NULL DEFAULT 0,
    errors         BIGINT       NOT NULL DEFAULT 0,
    lag_ms         BIGINT,
    last_error     TEXT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
