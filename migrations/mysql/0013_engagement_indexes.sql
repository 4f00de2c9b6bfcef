-- MariaDB answers the slide_engagement report by reading an index in
-- order, without looking up a row: every column the report reads is in it.
-- Over a range (grouped by presentation and slide) and day by day (grouped
-- by the date key first), at 1,000,000 events: 23 s and 14 s without
-- these, under 2 s with them. (PostgreSQL and SQLite aggregate the table
-- by hashing and need neither.)
DROP INDEX fact_engagement_slide ON fact_engagement;
CREATE INDEX fact_engagement_slide ON fact_engagement (presentation_id, slide, ts_ms, dwell_ms);
CREATE INDEX fact_engagement_day ON fact_engagement (date_key, presentation_id, slide, ts_ms, dwell_ms);
