-- Every reconciliation of the legacy reports with the warehouse (cutover
-- reconcile, or a verify.reports task): when, over which days, its status
-- and totals, and the whole result as JSON (per report and day, with a
-- bounded sample of the differing rows and events).
CREATE TABLE cutover_reconciliations (
    id             VARCHAR(64)  NOT NULL PRIMARY KEY,
    started_at     VARCHAR(32)  NOT NULL,
    finished_at    VARCHAR(32)  NOT NULL,
    origin         VARCHAR(255) NOT NULL,
    range_from     VARCHAR(32),
    range_to       VARCHAR(32),
    status         VARCHAR(16)  NOT NULL,
    days           BIGINT       NOT NULL,
    days_differing BIGINT       NOT NULL,
    result         TEXT NOT NULL
);
CREATE INDEX cutover_reconciliations_started ON cutover_reconciliations (started_at);

-- One row per report of a reconciliation, so that what covers a report
-- (and its data point) is found without reading the results.
CREATE TABLE cutover_reconciliation_reports (
    reconciliation_id VARCHAR(64) NOT NULL,
    report            VARCHAR(64) NOT NULL,
    status            VARCHAR(16) NOT NULL,
    days              BIGINT      NOT NULL,
    days_differing    BIGINT      NOT NULL,
    legacy_rows       BIGINT      NOT NULL,
    warehouse_rows    BIGINT      NOT NULL,
    PRIMARY KEY (reconciliation_id, report)
);
CREATE INDEX cutover_reconciliation_reports_report ON cutover_reconciliation_reports (report, reconciliation_id);
