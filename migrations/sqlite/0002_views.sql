-- The date and device dimensions and the views fact.

CREATE TABLE dim_date (
    date_key INTEGER     NOT NULL PRIMARY KEY, -- yyyymmdd
    date     VARCHAR(10) NOT NULL,             -- YYYY-MM-DD
    year     INTEGER     NOT NULL,
    month    INTEGER     NOT NULL,
    day      INTEGER     NOT NULL,
    weekday  INTEGER     NOT NULL              -- 1 = Monday ... 7 = Sunday
);

CREATE TABLE dim_device (
    device VARCHAR(32) NOT NULL PRIMARY KEY
);

-- One row per distinct presentation.viewed event.
CREATE TABLE fact_views (
    event_id        VARCHAR(64)  NOT NULL PRIMARY KEY,
    ts_ms           BIGINT       NOT NULL,
    date_key        INTEGER      NOT NULL,
    presentation_id VARCHAR(64)  NOT NULL,
    session_id      VARCHAR(64)  NOT NULL,
    user_id         VARCHAR(64),
    device          VARCHAR(32)  NOT NULL,
    referrer        VARCHAR(512),
    doc_id          VARCHAR(32)  NOT NULL
);
CREATE INDEX fact_views_date ON fact_views (date_key, presentation_id);
