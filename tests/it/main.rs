//! Integration tests: the `cutover` binary against real warehouses.
//!
//! SQLite always runs. MariaDB/MySQL and PostgreSQL run when
//! `CUTOVER_TEST_MYSQL_URL` / `CUTOVER_TEST_POSTGRES_URL` name a server
//! (`tests/run.sh` sets them); each test makes its own database and drops it.
//! MongoDB tests run when `CUTOVER_TEST_MONGO_URL` names a server, the live
//! feed's when `CUTOVER_TEST_SQS_ENDPOINT` names an SQS-compatible one.

mod backfill;
mod checks;
mod cli;
mod flags;
mod hostile;
mod leases;
mod merge;
mod mongo;
mod reconcile;
mod schedule;
mod serve;
mod slice;
mod sqs;
mod star;
mod subset;
mod support;
mod views;
