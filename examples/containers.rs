//! Starts MongoDB, MySQL and PostgreSQL in containers with testcontainers
//! (needs a reachable Docker engine and `--features containers`), prints
//! the test suite's environment for them, and removes them when standard
//! input closes. `tests/run.sh --containers` uses it:
//!
//! ```sh
//! cargo run --features containers --example containers
//! ```

use std::io::Read;

use testcontainers_modules::mongo::Mongo;
use testcontainers_modules::mysql::Mysql;
use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::testcontainers::runners::SyncRunner;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mongo = Mongo::default().start()?;
    let mysql = Mysql::default().start()?;
    let postgres = Postgres::default().start()?;
    println!(
        "CUTOVER_TEST_MONGO_URL=mongodb://{}:{}/?directConnection=true",
        mongo.get_host()?,
        mongo.get_host_port_ipv4(27017)?
    );
    println!(
        "CUTOVER_TEST_MYSQL_URL=mysql://root@{}:{}/test",
        mysql.get_host()?,
        mysql.get_host_port_ipv4(3306)?
    );
    println!(
        "CUTOVER_TEST_POSTGRES_URL=postgres://postgres:postgres@{}:{}/postgres",
        postgres.get_host()?,
        postgres.get_host_port_ipv4(5432)?
    );
    // Wait for the test run to finish; the containers go when they drop.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}
