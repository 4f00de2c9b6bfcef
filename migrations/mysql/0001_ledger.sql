-- The run ledger, watermarks and quarantine: cutover's own bookkeeping.

CREATE TABLE cutover_runs (
    run_id           VARCHAR(64)  NOT NULL PRIMARY KEY,
    dag              VARCHAR(128) NOT NULL,
    trigger_kind     VARCHAR(16)  NOT NULL,
    scheduled_at     VARCHAR(32),
    started_at       VARCHAR(32)  NOT NULL,
    ended_at         VARCHAR(32),
    state            VARCHAR(16)  NOT NULL,
    rows_read        BIGINT       NOT NULL DEFAULT 0,
    rows_written     BIGINT       NOT NULL DEFAULT 0,
    rows_quarantined BIGINT       NOT NULL DEFAULT 0,
    error            TEXT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX cutover_runs_dag ON cutover_runs (dag, started_at);

CREATE TABLE cutover_task_attempts (
    run_id           VARCHAR(64)  NOT NULL,
    task             VARCHAR(128) NOT NULL,
    attempt          INTEGER      NOT NULL,
    state            VARCHAR(16)  NOT NULL,
    started_at       VARCHAR(32),
    ended_at         VARCHAR(32),
    rows_read        BIGINT       NOT NULL DEFAULT 0,
    rows_written     BIGINT       NOT NULL DEFAULT 0,
    rows_quarantined BIGINT       NOT NULL DEFAULT 0,
    summary          TEXT,
    error            TEXT,
    retryable        INTEGER      NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, task, attempt)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- How far each extract has read: the greatest source timestamp (epoch ms)
-- whose documents are committed. Written in the same transaction as the
-- data it covers.
CREATE TABLE cutover_watermarks (
    dag        VARCHAR(128) NOT NULL,
    task       VARCHAR(128) NOT NULL,
    ts_ms      BIGINT       NOT NULL,
    run_id     VARCHAR(64)  NOT NULL,
    updated_at VARCHAR(32)  NOT NULL,
    PRIMARY KEY (dag, task)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Invalid source documents, kept with the reason and the raw document.
CREATE TABLE cutover_quarantine (
    dag            VARCHAR(128) NOT NULL,
    task           VARCHAR(128) NOT NULL,
    doc_id         VARCHAR(64)  NOT NULL,
    event_id       VARCHAR(128),
    event_type     VARCHAR(128),
    reason         TEXT         NOT NULL,
    raw            TEXT         NOT NULL,
    run_id         VARCHAR(64)  NOT NULL,
    quarantined_at VARCHAR(32)  NOT NULL,
    PRIMARY KEY (dag, task, doc_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
