-- Dirty production data must load, or be quarantined, never stop a load.
-- SQLite enforces no VARCHAR length and stores 64-bit integers in any
-- INTEGER column, so the facts and dimensions need no change here.

-- The quarantine: where a document was (line number or _id), and how the
-- raw form is written (`json`, `text`, or `base64` for bytes that are not
-- UTF-8 or hold a NUL).
ALTER TABLE cutover_quarantine ADD COLUMN raw_encoding VARCHAR(8) NOT NULL DEFAULT 'json';
ALTER TABLE cutover_quarantine ADD COLUMN location TEXT;

-- Who runs each run: a run whose process died is recorded as interrupted
-- by the next run of its DAG: on the same machine and pid namespace when
-- its process (pid and start time) is gone, elsewhere when its heartbeat
-- is old.
ALTER TABLE cutover_runs ADD COLUMN host VARCHAR(255);
ALTER TABLE cutover_runs ADD COLUMN pid BIGINT;
ALTER TABLE cutover_runs ADD COLUMN process VARCHAR(255);
ALTER TABLE cutover_runs ADD COLUMN heartbeat_ms BIGINT;

-- A feed consumer also counts the messages it left for consumers of other
-- DAGs, those of types no DAG takes, and the events it quarantined because
-- they alone made a run fail.
ALTER TABLE cutover_consumers ADD COLUMN left_for_others BIGINT NOT NULL DEFAULT 0;
ALTER TABLE cutover_consumers ADD COLUMN ignored BIGINT NOT NULL DEFAULT 0;
ALTER TABLE cutover_consumers ADD COLUMN isolated BIGINT NOT NULL DEFAULT 0;
