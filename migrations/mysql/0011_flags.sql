-- The cutover flag of every data point (`[cutover]` in its DAG file): its
-- state (legacy, shadow, warehouse, retired), the warehouse's share of the
-- reads in `warehouse` (rollout, percent), since when, and a version that
-- grows with every change (servers poll it).
CREATE TABLE cutover_flags (
    data_point  VARCHAR(64)  NOT NULL PRIMARY KEY,
    state       VARCHAR(16)  NOT NULL,
    rollout     BIGINT       NOT NULL,
    since       VARCHAR(32)  NOT NULL,
    full_since  VARCHAR(32),
    changed_at  VARCHAR(32)  NOT NULL,
    version     BIGINT       NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Every change of a flag: who, when, from, to, why, whether it was forced,
-- and the evidence that allowed it (JSON).
CREATE TABLE cutover_flag_changes (
    id           VARCHAR(64)  NOT NULL PRIMARY KEY,
    data_point   VARCHAR(64)  NOT NULL,
    changed_at   VARCHAR(32)  NOT NULL,
    actor        VARCHAR(255) NOT NULL,
    from_state   VARCHAR(16)  NOT NULL,
    from_rollout BIGINT       NOT NULL,
    to_state     VARCHAR(16)  NOT NULL,
    to_rollout   BIGINT       NOT NULL,
    reason       LONGTEXT,
    forced       BIGINT       NOT NULL,
    evidence     LONGTEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX cutover_flag_changes_point ON cutover_flag_changes (data_point, changed_at);

-- Reads served and shadow comparisons made, counted by the servers and
-- written in batches: one row per server, data point and flush.
CREATE TABLE cutover_read_counts (
    id               VARCHAR(64)  NOT NULL PRIMARY KEY,
    data_point       VARCHAR(64)  NOT NULL,
    counted_at       VARCHAR(32)  NOT NULL,
    legacy_reads     BIGINT       NOT NULL,
    warehouse_reads  BIGINT       NOT NULL,
    comparisons      BIGINT       NOT NULL,
    mismatches       BIGINT       NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX cutover_read_counts_point ON cutover_read_counts (data_point, counted_at);

-- Every shadow comparison that mismatched: the request and the differing
-- rows (a bounded sample, JSON).
CREATE TABLE cutover_shadow_mismatches (
    id          VARCHAR(64)  NOT NULL PRIMARY KEY,
    data_point  VARCHAR(64)  NOT NULL,
    report      VARCHAR(64)  NOT NULL,
    seen_at     VARCHAR(32)  NOT NULL,
    request     LONGTEXT NOT NULL,
    rows_differing BIGINT    NOT NULL,
    differences LONGTEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX cutover_shadow_mismatches_point ON cutover_shadow_mismatches (data_point, seen_at);
