-- One row per segment a load committed, written in the same transaction as
-- the segment's rows and watermark: what each run made durable, and how far
-- a killed run got.
CREATE TABLE cutover_commits (
    run_id       VARCHAR(64)  NOT NULL,
    dag          VARCHAR(128) NOT NULL,
    task         VARCHAR(128) NOT NULL,
    segment      BIGINT       NOT NULL,
    rows_offered BIGINT       NOT NULL,
    rows_changed BIGINT       NOT NULL,
    watermark_ms BIGINT,
    committed_at VARCHAR(32)  NOT NULL,
    PRIMARY KEY (run_id, task, segment)
);
