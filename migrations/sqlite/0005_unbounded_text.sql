-- Free text from the events has no length limit in the source, so none in
-- the warehouse either. SQLite never enforced the VARCHAR length of
-- fact_views.referrer; this version only keeps the backends in step.
SELECT 1;
