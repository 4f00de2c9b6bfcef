-- MariaDB answers the slide_engagement report by reading this index in
-- order, without looking up a row: every column the report reads is in it,
-- grouped by presentation and slide over a range, and by presentation,
-- slide and date key day by day. At 1,000,000 events: 23 s and 14 s with
-- the index on (presentation_id, slide) alone, 0.5 s and 2.3 s with this.
-- (PostgreSQL and SQLite aggregate the table by hashing.)
DROP INDEX fact_engagement_slide ON fact_engagement;
CREATE INDEX fact_engagement_slide ON fact_engagement (presentation_id, slide, date_key, ts_ms, dwell_ms);
