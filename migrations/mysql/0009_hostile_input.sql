-- Dirty production data must load, or be quarantined, never stop a load.
--
-- Identifiers from the events have no length limit in the source: wide
-- enough columns for what the legacy analytics counts (a key stays
-- indexable: 512 characters of utf8mb4 is 2,048 bytes, under InnoDB's 3,072).
-- Free text holds anything a MongoDB document can (LONGTEXT). Counters that
-- the source stores as 64-bit integers are BIGINT.
ALTER TABLE fact_views
    MODIFY event_id        VARCHAR(512) NOT NULL,
    MODIFY presentation_id VARCHAR(512) NOT NULL,
    MODIFY session_id      VARCHAR(512) NOT NULL,
    MODIFY user_id         VARCHAR(512),
    MODIFY referrer        LONGTEXT;
ALTER TABLE fact_engagement
    MODIFY event_id        VARCHAR(512) NOT NULL,
    MODIFY presentation_id VARCHAR(512) NOT NULL,
    MODIFY session_id      VARCHAR(512) NOT NULL,
    MODIFY user_id         VARCHAR(512),
    MODIFY slide           BIGINT       NOT NULL,
    MODIFY payload_version BIGINT       NOT NULL;
ALTER TABLE fact_shares
    MODIFY event_id        VARCHAR(512) NOT NULL,
    MODIFY presentation_id VARCHAR(512) NOT NULL,
    MODIFY user_id         VARCHAR(512) NOT NULL;
ALTER TABLE fact_sessions
    MODIFY session_id       VARCHAR(512) NOT NULL,
    MODIFY user_id          VARCHAR(512),
    MODIFY started_event_id VARCHAR(512),
    MODIFY ended_event_id   VARCHAR(512);
ALTER TABLE dim_user
    MODIFY version_id VARCHAR(512) NOT NULL,
    MODIFY user_id    VARCHAR(512) NOT NULL;
ALTER TABLE dim_presentation
    MODIFY presentation_id VARCHAR(512) NOT NULL,
    MODIFY owner_id        VARCHAR(512),
    MODIFY title           LONGTEXT,
    MODIFY slide_count     BIGINT;

-- Keys must not depend on trailing spaces: `dup` and `dup ` are two events,
-- as they are in MongoDB. utf8mb4_bin pads (PAD SPACE); the NO PAD binary
-- collation is utf8mb4_nopad_bin on MariaDB and utf8mb4_0900_bin on MySQL 8.
-- A server with neither (MySQL 5.7) fails here: PREPARE of a NULL
-- statement is an error, rather than keys that collide silently.
SET @cutover_nopad = (SELECT COLLATION_NAME FROM information_schema.COLLATIONS
      WHERE COLLATION_NAME IN ('utf8mb4_nopad_bin', 'utf8mb4_0900_bin')
      ORDER BY COLLATION_NAME DESC LIMIT 1);
SET @s = CONCAT('ALTER TABLE fact_views CONVERT TO CHARACTER SET utf8mb4 COLLATE ', @cutover_nopad);
PREPARE s FROM @s; EXECUTE s; DEALLOCATE PREPARE s;
SET @s = CONCAT('ALTER TABLE fact_engagement CONVERT TO CHARACTER SET utf8mb4 COLLATE ', @cutover_nopad);
PREPARE s FROM @s; EXECUTE s; DEALLOCATE PREPARE s;
SET @s = CONCAT('ALTER TABLE fact_shares CONVERT TO CHARACTER SET utf8mb4 COLLATE ', @cutover_nopad);
PREPARE s FROM @s; EXECUTE s; DEALLOCATE PREPARE s;
SET @s = CONCAT('ALTER TABLE fact_sessions CONVERT TO CHARACTER SET utf8mb4 COLLATE ', @cutover_nopad);
PREPARE s FROM @s; EXECUTE s; DEALLOCATE PREPARE s;
SET @s = CONCAT('ALTER TABLE dim_user CONVERT TO CHARACTER SET utf8mb4 COLLATE ', @cutover_nopad);
PREPARE s FROM @s; EXECUTE s; DEALLOCATE PREPARE s;
SET @s = CONCAT('ALTER TABLE dim_presentation CONVERT TO CHARACTER SET utf8mb4 COLLATE ', @cutover_nopad);
PREPARE s FROM @s; EXECUTE s; DEALLOCATE PREPARE s;
SET @s = CONCAT('ALTER TABLE dim_device CONVERT TO CHARACTER SET utf8mb4 COLLATE ', @cutover_nopad);
PREPARE s FROM @s; EXECUTE s; DEALLOCATE PREPARE s;
SET @s = CONCAT('ALTER TABLE dim_date CONVERT TO CHARACTER SET utf8mb4 COLLATE ', @cutover_nopad);
PREPARE s FROM @s; EXECUTE s; DEALLOCATE PREPARE s;
-- cutover's own tables too, so that any comparison between them and the
-- facts has one collation.
SET @s = CONCAT('ALTER TABLE cutover_runs CONVERT TO CHARACTER SET utf8mb4 COLLATE ', @cutover_nopad);
PREPARE s FROM @s; EXECUTE s; DEALLOCATE PREPARE s;
SET @s = CONCAT('ALTER TABLE cutover_task_attempts CONVERT TO CHARACTER SET utf8mb4 COLLATE ', @cutover_nopad);
PREPARE s FROM @s; EXECUTE s; DEALLOCATE PREPARE s;
SET @s = CONCAT('ALTER TABLE cutover_watermarks CONVERT TO CHARACTER SET utf8mb4 COLLATE ', @cutover_nopad);
PREPARE s FROM @s; EXECUTE s; DEALLOCATE PREPARE s;
SET @s = CONCAT('ALTER TABLE cutover_quarantine CONVERT TO CHARACTER SET utf8mb4 COLLATE ', @cutover_nopad);
PREPARE s FROM @s; EXECUTE s; DEALLOCATE PREPARE s;
SET @s = CONCAT('ALTER TABLE cutover_commits CONVERT TO CHARACTER SET utf8mb4 COLLATE ', @cutover_nopad);
PREPARE s FROM @s; EXECUTE s; DEALLOCATE PREPARE s;
SET @s = CONCAT('ALTER TABLE cutover_consumers CONVERT TO CHARACTER SET utf8mb4 COLLATE ', @cutover_nopad);
PREPARE s FROM @s; EXECUTE s; DEALLOCATE PREPARE s;
SET @s = CONCAT('ALTER TABLE cutover_leases CONVERT TO CHARACTER SET utf8mb4 COLLATE ', @cutover_nopad);
PREPARE s FROM @s; EXECUTE s; DEALLOCATE PREPARE s;
SET @s = CONCAT('ALTER TABLE cutover_backfill_chunks CONVERT TO CHARACTER SET utf8mb4 COLLATE ', @cutover_nopad);
PREPARE s FROM @s; EXECUTE s; DEALLOCATE PREPARE s;

-- The quarantine can hit no limit: any reason, any raw document (LONGTEXT),
-- where it was (line number or _id), and how the raw form is written
-- (`json`, `text`, or `base64` for bytes that are not UTF-8).
ALTER TABLE cutover_quarantine
    MODIFY event_id   TEXT,
    MODIFY event_type TEXT,
    MODIFY reason     LONGTEXT NOT NULL,
    MODIFY raw        LONGTEXT NOT NULL,
    ADD COLUMN raw_encoding VARCHAR(8) NOT NULL DEFAULT 'json',
    ADD COLUMN location     TEXT;

-- The ledger keeps the whole cause of a failure, and who runs each run:
-- a run whose process died is recorded as interrupted by the next run of
-- its DAG: on the same machine and pid namespace when its process (pid
-- and start time) is gone, elsewhere when its heartbeat is old.
ALTER TABLE cutover_runs
    MODIFY error LONGTEXT,
    ADD COLUMN host         VARCHAR(255),
    ADD COLUMN pid          BIGINT,
    ADD COLUMN process      VARCHAR(255),
    ADD COLUMN heartbeat_ms BIGINT;
ALTER TABLE cutover_task_attempts
    MODIFY summary LONGTEXT,
    MODIFY error   LONGTEXT;
ALTER TABLE cutover_backfill_chunks MODIFY error LONGTEXT;
ALTER TABLE cutover_consumers MODIFY last_error LONGTEXT;

-- A feed consumer also counts the messages it left for consumers of other
-- DAGs, those of types no DAG takes, and the events it quarantined because
-- they alone made a run fail.
ALTER TABLE cutover_consumers
    ADD COLUMN left_for_others BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN ignored BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN isolated BIGINT NOT NULL DEFAULT 0;
