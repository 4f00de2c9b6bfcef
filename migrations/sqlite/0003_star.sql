-- The rest of the star schema: the user (type 2) and presentation (type 1)
-- dimensions and the engagement, shares and sessions facts.

-- One row per version of a user: a user.registered or user.plan_changed
-- event. valid_to_ms is the valid_from_ms of the user's next version (null
-- for the current one); versions at the same instant are ordered by doc_id,
-- and all but the last of them get an empty range.
CREATE TABLE dim_user (
    version_id    VARCHAR(64) NOT NULL PRIMARY KEY, -- the event's event_id
    user_id       VARCHAR(64) NOT NULL,
    plan          VARCHAR(16) NOT NULL,
    valid_from_ms BIGINT      NOT NULL,
    valid_to_ms   BIGINT,
    doc_id        VARCHAR(32) NOT NULL,
    source_type   VARCHAR(32) NOT NULL
);
CREATE INDEX dim_user_range ON dim_user (user_id, valid_from_ms);

-- One row per presentation; a rename overwrites the title.
CREATE TABLE dim_presentation (
    presentation_id VARCHAR(64)   NOT NULL PRIMARY KEY,
    owner_id        VARCHAR(64),
    title           TEXT,
    slide_count     INTEGER,
    created_ms      BIGINT,
    version_ts_ms   BIGINT        NOT NULL, -- ts of the event that last set the title
    version_doc_id  VARCHAR(32)   NOT NULL
);

-- One row per distinct slide.viewed event.
CREATE TABLE fact_engagement (
    event_id        VARCHAR(64) NOT NULL PRIMARY KEY,
    ts_ms           BIGINT      NOT NULL,
    date_key        INTEGER     NOT NULL,
    presentation_id VARCHAR(64) NOT NULL,
    session_id      VARCHAR(64) NOT NULL,
    user_id         VARCHAR(64),
    slide           INTEGER     NOT NULL,
    dwell_ms        BIGINT      NOT NULL,
    payload_version INTEGER     NOT NULL,
    doc_id          VARCHAR(32) NOT NULL
);
CREATE INDEX fact_engagement_slide ON fact_engagement (presentation_id, slide);

-- One row per distinct presentation.shared event.
CREATE TABLE fact_shares (
    event_id        VARCHAR(64) NOT NULL PRIMARY KEY,
    ts_ms           BIGINT      NOT NULL,
    date_key        INTEGER     NOT NULL,
    presentation_id VARCHAR(64) NOT NULL,
    user_id         VARCHAR(64) NOT NULL,
    channel         VARCHAR(16) NOT NULL,
    doc_id          VARCHAR(32) NOT NULL
);
CREATE INDEX fact_shares_date ON fact_shares (date_key, channel);

-- One row per session (an accumulating snapshot): the start columns come
-- from session.started, ended_ms from session.ended, in either order and
-- in different runs; duration_ms once both are known.
CREATE TABLE fact_sessions (
    session_id       VARCHAR(64) NOT NULL PRIMARY KEY,
    user_id          VARCHAR(64),
    device           VARCHAR(32),
    started_ms       BIGINT,
    start_date_key   INTEGER,
    started_event_id VARCHAR(64),
    ended_ms         BIGINT,
    ended_event_id   VARCHAR(64),
    duration_ms      BIGINT GENERATED ALWAYS AS (ended_ms - started_ms) STORED
);
CREATE INDEX fact_sessions_start ON fact_sessions (start_date_key, device);
