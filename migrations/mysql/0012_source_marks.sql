-- What each nightly extract found at its start: the source's mark (an
-- events file's size, time and inode; a collection's newest _id and
-- document count), with the DAG's definition, and the watermark it read
-- from. A run whose marks equal those of the DAG's last successful run
-- has nothing new to read: its tasks after the extracts are not run.
CREATE TABLE cutover_source_marks (
    run_id       VARCHAR(64)  NOT NULL,
    dag          VARCHAR(128) NOT NULL,
    task         VARCHAR(128) NOT NULL,
    mark         VARCHAR(512) NOT NULL,
    watermark_ms BIGINT,
    PRIMARY KEY (run_id, task)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX cutover_source_marks_dag ON cutover_source_marks (dag, task);
-- Joined with cutover_runs on run_id: the same NO PAD binary collation
-- (see 0009_hostile_input.sql).
SET @cutover_nopad = (SELECT COLLATION_NAME FROM information_schema.COLLATIONS
      WHERE COLLATION_NAME IN ('utf8mb4_nopad_bin', 'utf8mb4_0900_bin')
      ORDER BY COLLATION_NAME DESC LIMIT 1);
SET @s = CONCAT('ALTER TABLE cutover_source_marks CONVERT TO CHARACTER SET utf8mb4 COLLATE ', @cutover_nopad);
PREPARE s FROM @s; EXECUTE s; DEALLOCATE PREPARE s;
