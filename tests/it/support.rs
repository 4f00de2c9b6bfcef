//! Shared test helpers: warehouses per backend, running the binary, and an
//! independent reading of events files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

/// A warehouse made for one test; dropped when the test ends.
pub struct TestWarehouse {
    pub url: String,
    pub name: &'static str,
    _dir: Option<tempfile::TempDir>,
    drop_sql: Option<(String, String)>,
}

impl Drop for TestWarehouse {
    fn drop(&mut self) {
        if let Some((admin_url, sql)) = self.drop_sql.take() {
            // Best effort, on a fresh runtime: the test's own may be gone.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    sqlx::any::install_default_drivers();
                    if let Ok(pool) = AnyPoolOptions::new()
                        .max_connections(1)
                        .connect(&admin_url)
                        .await
                    {
                        let _ = sqlx::query(&sql).execute(&pool).await;
                    }
                });
            })
            .join();
        }
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .get(..12)
            .unwrap_or_default()
    )
}

/// The address of a test server from the environment variable `var`,
/// checked to accept connections. Outside CI a missing or unreachable one
/// skips the test (it says so, and `tests/run.sh` counts it as skipped);
/// under `CI=true` it fails the test, naming the variable, so that a green
/// CI run has tested every server.
pub fn server(var: &str) -> Option<String> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let problem = match std::env::var(var) {
        Ok(v) if !v.is_empty() => match reachable(&v) {
            Ok(()) => return Some(v),
            Err(e) => format!("{var} names a server that does not answer ({e})"),
        },
        _ => format!("{var} is not set"),
    };
    if ci {
        panic!("{problem}, and under CI=true every test server is required");
    }
    eprintln!("{problem}: skipped");
    if let Ok(path) = std::env::var("CUTOVER_TEST_SKIPS") {
        use std::io::Write;
        let test = std::thread::current()
            .name()
            .unwrap_or("unknown")
            .to_owned();
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}");
        }
    }
    None
}

/// Whether the host and port of a server URL accept a TCP connection.
fn reachable(url: &str) -> std::io::Result<()> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let default_port = match url.split(':').next() {
        Some("mysql" | "mariadb") => 3306,
        Some("postgres" | "postgresql") => 5432,
        Some("mongodb") => 27017,
        Some("https") => 443,
        _ => 80,
    };
    let addr = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    };
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for a in std::net::ToSocketAddrs::to_socket_addrs(&addr)? {
        match std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(3)) {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Every warehouse backend available to this test run.
pub async fn warehouses() -> Result<Vec<TestWarehouse>> {
    sqlx::any::install_default_drivers();
    let mut out = Vec::new();
    let dir = tempfile::tempdir()?;
    out.push(TestWarehouse {
        url: format!("sqlite:{}", dir.path().join("w.db").display()),
        name: "sqlite",
        _dir: Some(dir),
        drop_sql: None,
    });
    if let Some(admin) = server("CUTOVER_TEST_MYSQL_URL") {
        let db = unique("cutover_t");
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&admin)
            .await
            .context("connecting to MySQL")?;
        sqlx::query(&format!(
            "CREATE DATABASE {db} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        ))
        .execute(&pool)
        .await?;
        out.push(TestWarehouse {
            url: format!("{}/{db}", base(&admin)),
            name: "mysql",
            _dir: None,
            drop_sql: Some((admin, format!("DROP DATABASE IF EXISTS {db}"))),
        });
    }
    if let Some(admin) = server("CUTOVER_TEST_POSTGRES_URL") {
        let db = unique("cutover_t");
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&admin)
            .await
            .context("connecting to PostgreSQL")?;
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&pool)
            .await?;
        out.push(TestWarehouse {
            url: format!("{}/{db}", base(&admin)),
            name: "postgres",
            _dir: None,
            drop_sql: Some((admin, format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))),
        });
    }
    Ok(out)
}

/// A MariaDB/MySQL warehouse for one test, or `None` (the test is skipped,
/// and says so) when `CUTOVER_TEST_MYSQL_URL` is not set (outside CI).
pub async fn mysql_warehouse() -> Result<Option<TestWarehouse>> {
    Ok(warehouses().await?.into_iter().find(|w| w.name == "mysql"))
}

/// The URL without its database path.
fn base(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => url[..after_scheme + i].to_owned(),
        None => url.to_owned(),
    }
}

/// Connects to a test warehouse.
pub async fn pool(url: &str) -> Result<AnyPool> {
    sqlx::any::install_default_drivers();
    Ok(AnyPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await?)
}

/// A headless Chromium to read pages with: `CUTOVER_TEST_CHROMIUM`, else
/// `chromium` on the PATH. Missing, the caller skips, except under
/// `CI=true`, where it fails.
pub fn chromium() -> Option<PathBuf> {
    let named = std::env::var_os("CUTOVER_TEST_CHROMIUM").map(PathBuf::from);
    let found = named.or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("chromium"))
                .find(|p| p.is_file())
        })
    });
    if found.is_none() {
        let problem = "no chromium (set CUTOVER_TEST_CHROMIUM or install Debian's chromium)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{problem}, and under CI=true every test tool is required");
        }
        eprintln!("{problem}: the page is not checked");
    }
    found
}

/// A test tool named by the environment variable `var` (which
/// `tests/run.sh` sets), else `name` on the PATH. Missing, the caller
/// skips, except under `CI=true`, where it fails.
pub fn tool(var: &str, name: &str) -> Option<PathBuf> {
    let named = std::env::var_os(var).map(PathBuf::from);
    let found = named.filter(|p| p.is_file()).or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    });
    if found.is_none() {
        let problem = format!("no {name} (set {var}; tests/run.sh installs it)");
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{problem}, and under CI=true every test tool is required");
        }
        eprintln!("{problem}: skipped");
    }
    found
}

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the `cutover` binary with a source file and a warehouse, on the
/// shipped DAGs.
pub fn cutover(source: &Path, warehouse: &str, work: &Path, args: &[&str]) -> Output {
    cutover_with(
        &source.display().to_string(),
        warehouse,
        work,
        &root().join("dags"),
        args,
    )
}

/// The `cutover` binary set to a source URL, a warehouse, a work directory
/// and a DAG directory.
pub fn command(source: &str, warehouse: &str, work: &Path, dags: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
    cmd.env("CUTOVER_SOURCE_URL", source)
        .env("CUTOVER_WAREHOUSE_URL", warehouse)
        .env("CUTOVER_WORK_DIR", work)
        .env("CUTOVER_DAGS", dags)
        .env_remove("RUST_LOG");
    cmd
}

/// Runs the `cutover` binary with a source URL and a DAG directory.
pub fn cutover_with(
    source: &str,
    warehouse: &str,
    work: &Path,
    dags: &Path,
    args: &[&str],
) -> Output {
    command(source, warehouse, work, dags)
        .args(args)
        .output()
        .expect("the cutover binary runs")
}

/// Sends SIGTERM to a long-running `cutover` and returns its standard
/// output and error; it must exit cleanly.
pub async fn terminate(child: std::process::Child) -> Result<(String, String)> {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "SIGTERM ends it cleanly: {}\n{stdout}\n{stderr}",
        out.status
    );
    Ok((stdout, stderr))
}

/// A copy of the shipped DAGs in `dir/dags`, each file's text passed
/// through `edit`.
pub fn dags_edited(dir: &Path, edit: impl Fn(String) -> String) -> Result<PathBuf> {
    let out = dir.join("dags");
    std::fs::create_dir_all(&out)?;
    for entry in std::fs::read_dir(root().join("dags"))? {
        let path = entry?.path();
        let text = edit(std::fs::read_to_string(&path)?);
        std::fs::write(out.join(path.file_name().unwrap()), text)?;
    }
    Ok(out)
}

/// A copy of the shipped DAGs reading MongoDB database `db`.
pub fn dags_for_database(dir: &Path, db: &str) -> Result<PathBuf> {
    dags_edited(dir, |text| {
        text.replace("database = \"app\"", &format!("database = \"{db}\""))
    })
}

/// Asserts the command succeeded and returns its standard output.
pub fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cutover failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Whether a run's output reports loads, all of which changed no row.
pub fn changed_nothing(out: &str) -> bool {
    let loads: Vec<&str> = out.lines().filter(|l| l.contains("rows changed")).collect();
    !loads.is_empty() && loads.iter().all(|l| l.contains(" 0 rows changed"))
}

/// Writes a seeded events file.
pub fn seed(dir: &Path, events: u64, seed: u64) -> PathBuf {
    let path = dir.join("events.jsonl");
    ok(Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args([
            "seed",
            "--events",
            &events.to_string(),
            "--seed",
            &seed.to_string(),
            "--out",
        ])
        .arg(&path)
        .output()
        .unwrap());
    path
}

/// One source document, read independently of cutover's own code.
#[derive(Debug, Clone)]
pub struct RawEvent {
    pub id: String,
    pub json: Value,
}

impl RawEvent {
    pub fn str(&self, path: &str) -> Option<&str> {
        self.get(path)?.as_str()
    }

    pub fn get(&self, path: &str) -> Option<&Value> {
        path.split('.').try_fold(&self.json, |v, p| v.get(p))
    }

    /// `Some(None)` for present-and-null or missing, `Some(Some(s))` for a
    /// string, `None` for anything else.
    pub fn nullable_str(&self, path: &str) -> Option<Option<&str>> {
        match self.get(path) {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(s)) => Some(Some(s)),
            Some(_) => None,
        }
    }

    /// `ts` in epoch ms from relaxed or canonical Extended JSON.
    pub fn ts_ms(&self) -> Option<i64> {
        let date = self.get("ts")?.get("$date")?;
        match date {
            Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.timestamp_millis()),
            Value::Object(o) => o.get("$numberLong")?.as_str()?.parse().ok(),
            _ => None,
        }
    }

    pub fn day(&self) -> Option<String> {
        chrono::DateTime::from_timestamp_millis(self.ts_ms()?)
            .map(|t| t.format("%Y-%m-%d").to_string())
    }
}

/// Reads an events file with serde_json only.
pub fn read_events(path: &Path) -> Vec<RawEvent> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let json: Value = serde_json::from_str(l).unwrap();
            let id = json["_id"]["$oid"].as_str().unwrap().to_owned();
            RawEvent { id, json }
        })
        .collect()
}

/// All rows of a table, each rendered as text, sorted: a snapshot to compare.
pub async fn snapshot(pool: &AnyPool, table: &str, columns: &[&str]) -> Result<Vec<String>> {
    let sql = format!("SELECT {} FROM {table}", columns.join(", "));
    let rows = sqlx::query(&sql).fetch_all(pool).await?;
    let mut out: Vec<String> = rows
        .iter()
        .map(|r| {
            (0..columns.len())
                .map(|i| {
                    r.try_get::<Option<String>, _>(i)
                        .map(|v| format!("{v:?}"))
                        .or_else(|_| {
                            // MySQL returns TEXT of a binary collation as bytes.
                            r.try_get::<Option<Vec<u8>>, _>(i).map(|v| {
                                format!("{:?}", v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                            })
                        })
                        .or_else(|_| r.try_get::<Option<i64>, _>(i).map(|v| format!("{v:?}")))
                        .or_else(|_| r.try_get::<Option<f64>, _>(i).map(|v| format!("{v:?}")))
                        .unwrap_or_else(|e| format!("<{e}>"))
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    out.sort();
    Ok(out)
}

/// A count from the warehouse.
pub async fn count(pool: &AnyPool, sql: &str) -> Result<i64> {
    Ok(sqlx::query(sql)
        .fetch_one(pool)
        .await?
        .try_get::<i64, _>(0)?)
}

/// Waits until `sql` counts at least `n` in the warehouse at `url`, while
/// `child` is still running (it must not end first); panics after `limit`.
/// A fresh connection per look, so that a SQLite writer is never blocked.
pub async fn wait_for_count(
    url: &str,
    sql: &str,
    n: i64,
    child: &mut std::process::Child,
    limit: Duration,
) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Some(status) = child.try_wait()? {
            panic!("the process ended ({status}) before `{sql}` reached {n}");
        }
        let seen = match pool(url).await {
            Ok(pool) => {
                let seen = count(&pool, sql).await.unwrap_or(0);
                pool.close().await;
                seen
            }
            Err(_) => 0,
        };
        if seen >= n {
            return Ok(());
        }
        if started.elapsed() > limit {
            child.kill()?;
            panic!("`{sql}` did not reach {n} within {limit:?}");
        }
    }
}

/// A text column as a string, whether the backend gives text or bytes
/// (MySQL gives TEXT of a binary collation as bytes); empty for null.
pub fn text(r: &sqlx::any::AnyRow, column: &str) -> String {
    r.try_get::<Option<String>, _>(column)
        .ok()
        .flatten()
        .or_else(|| {
            r.try_get::<Option<Vec<u8>>, _>(column)
                .ok()
                .flatten()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        })
        .unwrap_or_default()
}
