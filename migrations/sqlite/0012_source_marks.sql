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
);
CREATE INDEX cutover_source_marks_dag ON cutover_source_marks (dag, task);
