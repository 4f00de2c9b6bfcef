-- Free text from the events has no length limit in the source, so none in
-- the warehouse either: a long referrer must load, not fail the load.
ALTER TABLE fact_views ALTER COLUMN referrer TYPE TEXT;
