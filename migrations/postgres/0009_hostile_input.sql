-- Dirty production data must load, or be quarantined, never stop a load.
--
-- Identifiers from the events have no length limit in the source, so none
-- here (TEXT); counters the source stores as 64-bit integers are BIGINT.
ALTER TABLE fact_views
    ALTER COLUMN event_id TYPE TEXT,
    ALTER COLUMN presentation_id TYPE TEXT,
    ALTER COLUMN session_id TYPE TEXT,
    ALTER COLUMN user_id TYPE TEXT;
ALTER TABLE fact_engagement
    ALTER COLUMN event_id TYPE TEXT,
    ALTER COLUMN presentation_id TYPE TEXT,
    ALTER COLUMN session_id TYPE TEXT,
    ALTER COLUMN user_id TYPE TEXT,
    ALTER COLUMN slide TYPE BIGINT,
    ALTER COLUMN payload_version TYPE BIGINT;
ALTER TABLE fact_shares
    ALTER COLUMN event_id TYPE TEXT,
    ALTER COLUMN presentation_id TYPE TEXT,
    ALTER COLUMN user_id TYPE TEXT;
ALTER TABLE fact_sessions
    ALTER COLUMN session_id TYPE TEXT,
    ALTER COLUMN user_id TYPE TEXT,
    ALTER COLUMN started_event_id TYPE TEXT,
    ALTER COLUMN ended_event_id TYPE TEXT;
ALTER TABLE dim_user
    ALTER COLUMN version_id TYPE TEXT,
    ALTER COLUMN user_id TYPE TEXT;
ALTER TABLE dim_presentation
    ALTER COLUMN presentation_id TYPE TEXT,
    ALTER COLUMN owner_id TYPE TEXT,
    ALTER COLUMN slide_count TYPE BIGINT;

-- The quarantine can hit no limit: any reason, any raw document, where it
-- was (line number or _id), and how the raw form is written (`json`,
-- `text`, or `base64` for bytes that are not UTF-8 or hold a NUL).
ALTER TABLE cutover_quarantine
    ALTER COLUMN event_id TYPE TEXT,
    ALTER COLUMN event_type TYPE TEXT,
    ADD COLUMN raw_encoding VARCHAR(8) NOT NULL DEFAULT 'json',
    ADD COLUMN location TEXT;

-- Who runs each run: a run whose process died is recorded as interrupted
-- by the next run of its DAG: on the same machine and pid namespace when
-- its process (pid and start time) is gone, elsewhere when its heartbeat
-- is old.
ALTER TABLE cutover_runs
    ADD COLUMN host VARCHAR(255),
    ADD COLUMN pid BIGINT,
    ADD COLUMN process VARCHAR(255),
    ADD COLUMN heartbeat_ms BIGINT;

-- A feed consumer also counts the messages it left for consumers of other
-- DAGs, those of types no DAG takes, and the events it quarantined because
-- they alone made a run fail.
ALTER TABLE cutover_consumers
    ADD COLUMN left_for_others BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN ignored BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN isolated BIGINT NOT NULL DEFAULT 0;
