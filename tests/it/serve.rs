//! `cutover serve`: the analytics read API routed by the cutover flags, the
//! flags over OpenFeature (read with a real OpenFeature client and its OFREP
//! provider), and the walk of one data point from `legacy` to `retired`
//! against MongoDB and every warehouse.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use open_feature::{EvaluationContext, OpenFeature};
use open_feature_ofrep::{OfrepOptions, OfrepProvider};
use serde_json::{json, Value};

use crate::support::{self, ok};

/// A running `cutover serve`, stopped when dropped.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    log: Arc<Mutex<String>>,
    http: reqwest::Client,
}

/// One answer of the server.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

impl Server {
    /// Starts `cmd serve ARGS` on a free loopback port and waits until it
    /// listens.
    pub fn start(mut cmd: Command, args: &[&str]) -> Result<Self> {
        let mut child = cmd
            .arg("serve")
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(String::new()));
        let keep = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("serving http://") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(rest.split('/').next().unwrap_or_default().to_owned());
                    }
                }
                let mut l = keep.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("cutover serve did not start:\n{}", log.lock().unwrap());
            }
        };
        Ok(Self {
            child: Some(child),
            base: format!("http://{addr}"),
            log,
            // A fresh connection per request: the server closes an idle
            // keep-alive connection after its header timeout, and a request
            // written onto one in that instant fails with "connection closed
            // before message completed" (a race every HTTP client has; this
            // test is about the answers, not about connection reuse).
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()?,
        })
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<Answer> {
        let r = req.send().await?;
        Ok(Answer {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            text: r.text().await?,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Answer> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// A report read as `key`.
    pub async fn read(&self, path: &str, key: &str) -> Result<Answer> {
        let a = self
            .send(
                self.http
                    .get(format!("{}{path}", self.base))
                    .header("cutover-targeting-key", key),
            )
            .await?;
        assert_eq!(a.status, 200, "{path}: {}\n{}", a.text, self.log());
        Ok(a)
    }

    pub async fn post(&self, path: &str, body: &str) -> Result<Answer> {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .body(body.to_owned()),
        )
        .await
    }

    /// A counter of its `/metrics`, summed over the series that contain
    /// `labels`.
    pub async fn metric(&self, name: &str, labels: &str) -> Result<f64> {
        let text = self.get("/metrics").await?.text;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Stops it with SIGTERM; it must exit cleanly (writing its counts).
    pub async fn stop(mut self) -> Result<String> {
        let child = self.child.take().expect("running");
        support::terminate(child).await?;
        Ok(self.log())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The DAGs with the evidence of `views` and `shares` made small enough
/// for a test: 20 comparisons, retiring after 2 s.
fn small_evidence(dir: &Path, dags: &Path) -> Result<std::path::PathBuf> {
    let out = dir.join("small-dags");
    std::fs::create_dir_all(&out)?;
    for entry in std::fs::read_dir(dags)? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?
            .replace("comparisons = 1000", "comparisons = 20")
            .replace("retire_after = \"7d\"", "retire_after = \"2s\"");
        std::fs::write(out.join(path.file_name().unwrap()), text)?;
    }
    Ok(out)
}

/// The side an OpenFeature client is told to read for each key.
async fn sides_by_openfeature(base: &str, flag: &str, keys: &[String]) -> Result<Vec<String>> {
    let provider = OfrepProvider::new(OfrepOptions {
        base_url: base.to_owned(),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut api = OpenFeature::default();
    api.set_provider(provider).await;
    let client = api.create_client();
    let mut out = Vec::new();
    for k in keys {
        let ctx = EvaluationContext::default().with_targeting_key(k.clone());
        let d = client
            .get_string_details(flag, Some(&ctx), None)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        out.push(format!("{}/{}", d.value, d.variant.unwrap_or_default()));
    }
    Ok(out)
}

/// Waits until `check` holds, polling every 50 ms, at most `within`.
async fn until<F, Fut>(within: Duration, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let started = Instant::now();
    loop {
        if check().await? {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            bail!("not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The flag of a data point as the server holds it: `warehouse 10`.
async fn held(server: &Server, point: &str) -> Result<String> {
    let all = server.get("/v1/flags").await?.json();
    let f = all
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["flag"]["data_point"] == point)
        .map(|f| f["flag"].clone())
        .unwrap();
    Ok(format!("{} {}", f["state"].as_str().unwrap(), f["rollout"]))
}

/// Waits until the server holds `point`'s flag as `want`; how long it took.
async fn holds(server: &Server, point: &str, want: &str) -> Result<Duration> {
    until(Duration::from_secs(5), || async {
        Ok(held(server, point).await? == want)
    })
    .await
}

fn fail(out: std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn shown(run: &impl Fn(&[&str]) -> std::process::Output, point: &str) -> Result<Value> {
    Ok(serde_json::from_str(&ok(run(&[
        "flags", "show", point, "--format", "json",
    ])))?)
}

/// The walk of `views` from `legacy` to `retired`, reading the events from
/// MongoDB, on every warehouse; `shares` is damaged in the warehouse on the
/// way, and its shadow reads catch it.
#[tokio::test]
async fn a_data_point_walks_from_legacy_to_retired() -> Result<()> {
    let Some(mongo) = support::server("CUTOVER_TEST_MONGO_URL") else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let events = support::seed(dir.path(), 2500, 77);
    let (client, db) = crate::mongo::load_events(&mongo, &events).await?;
    let dags = support::dags_for_database(dir.path(), &db)?;
    let dags = small_evidence(dir.path(), &dags)?;
    for wh in support::warehouses().await? {
        let work = dir.path().join(format!("work-{}", wh.name));
        let cmd = || support::command(&mongo, &wh.url, &work, &dags);
        let run = |args: &[&str]| cmd().args(args).output().expect("cutover runs");
        ok(run(&["run", "--all"]));
        let server = Server::start(
            cmd(),
            &[
                "--database",
                &db,
                "--poll",
                "100ms",
                "--flush-every",
                "200ms",
                "--warehouse-sample",
                "1",
            ],
        )?;
        let name = wh.name;

        // legacy: the legacy analytics answer, as `cutover report` prints them.
        let legacy: Value = serde_json::from_str(&ok(run(&[
            "report",
            "views_daily",
            "--source",
            "legacy",
            "--database",
            &db,
            "--format",
            "json",
        ])))?;
        let a = server.read("/v1/reports/views_daily", "u1").await?;
        assert_eq!(a.header("cutover-source"), "legacy", "{name}");
        assert_eq!(a.header("cutover-flag"), "legacy", "{name}");
        assert_eq!(a.json(), legacy, "{name}");
        let day = legacy[0]["day"].as_str().unwrap().to_owned();
        let presentation = legacy[0]["presentation_id"].as_str().unwrap().to_owned();
        let csv = server
            .read(
                &format!(
                    "/v1/reports/views_daily?from={day}&presentation_id={presentation}&format=csv"
                ),
                "u1",
            )
            .await?;
        assert!(
            csv.text
                .starts_with("day,presentation_id,views,unique_viewers\n")
                && csv.text.lines().skip(1).all(|l| l.contains(&presentation)),
            "{name}: {}",
            csv.text
        );

        // shadow, clean: every comparison agrees.
        ok(run(&[
            "flags",
            "set",
            "views",
            "shadow",
            "--reason",
            "start comparing",
        ]));
        ok(run(&[
            "flags",
            "set",
            "shares",
            "shadow",
            "--reason",
            "start comparing",
        ]));
        holds(&server, "views", "shadow 0").await?;
        holds(&server, "shares", "shadow 0").await?;
        for i in 0..24 {
            let report = if i % 2 == 0 {
                "views_daily"
            } else {
                "views_by_plan"
            };
            let a = server
                .read(
                    &format!("/v1/reports/{report}?from={day}"),
                    &format!("u{i}"),
                )
                .await?;
            assert_eq!(a.header("cutover-source"), "legacy", "{name}");
        }
        // shadow, damaged: the shares of one channel gone from the facts.
        let pool = support::pool(&wh.url).await?;
        sqlx::query("DELETE FROM fact_shares WHERE channel = 'slack'")
            .execute(&pool)
            .await?;
        for i in 0..3 {
            server
                .read("/v1/reports/shares_daily", &format!("s{i}"))
                .await?;
        }
        until(Duration::from_secs(60), || async {
            let v = shown(&run, "views").await?;
            let s = shown(&run, "shares").await?;
            Ok(v["seen"]["comparisons"].as_u64() >= Some(24)
                && s["seen"]["mismatches"].as_u64() >= Some(3))
        })
        .await
        .map_err(|e| anyhow::anyhow!("{name}: {e}\n{}", server.log()))?;
        let v = shown(&run, "views").await?;
        assert_eq!(
            v["seen"]["mismatches"], 0,
            "{name}: clean data, no mismatch: {v}"
        );
        let mismatch = &shown(&run, "shares").await?;
        let why = fail(run(&[
            "flags",
            "set",
            "shares",
            "warehouse",
            "--rollout",
            "10",
        ]));
        assert!(
            why.contains("3 of 3 shadow comparisons mismatched"),
            "{name}: {why}"
        );
        let detail = server.get("/v1/flags/shares").await?.json();
        let recorded = &detail["recent_mismatches"][0];
        assert_eq!(recorded["report"], "shares_daily", "{name}: {mismatch}");
        assert!(
            recorded["differences"]["rows"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["key"][1] == "slack" && r["warehouse"].is_null()),
            "{name}: the differing rows are the slack shares: {recorded}"
        );

        // Promotion: refused without passing reconciliations, allowed with.
        let why = fail(run(&[
            "flags",
            "set",
            "views",
            "warehouse",
            "--rollout",
            "10",
        ]));
        assert!(
            why.contains("views_by_plan: 0 passing reconciliations"),
            "{name}: {why}"
        );
        assert!(!why.contains("shadow comparisons"), "{name}: {why}");
        for _ in 0..3 {
            ok(run(&["reconcile", "views", "--database", &db]));
        }
        ok(run(&[
            "flags",
            "set",
            "views",
            "warehouse",
            "--rollout",
            "10",
        ]));

        // warehouse 10 %: a sticky share of the targeting keys, the same
        // side the application's OpenFeature client is told to read.
        holds(&server, "views", "warehouse 10").await?;
        let keys: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
        let mut sides = Vec::new();
        for k in &keys {
            let a = server
                .read(&format!("/v1/reports/views_daily?from={day}"), k)
                .await?;
            sides.push(format!("{}/warehouse", a.header("cutover-source")));
        }
        let to_warehouse = sides.iter().filter(|s| s.starts_with("warehouse/")).count();
        assert!(
            (1..=15).contains(&to_warehouse),
            "{name}: {to_warehouse} of 60 keys"
        );
        for (k, s) in keys.iter().zip(&sides).take(20) {
            let again = server
                .read(&format!("/v1/reports/views_daily?from={day}"), k)
                .await?;
            assert_eq!(
                &format!("{}/warehouse", again.header("cutover-source")),
                s,
                "sticky"
            );
        }
        assert_eq!(
            sides_by_openfeature(&server.base, "views", &keys).await?,
            sides,
            "{name}: OpenFeature names the side the API answers from"
        );
        let raw = server
            .post(
                "/ofrep/v1/evaluate/flags/views",
                r#"{"context":{"targetingKey":"user-1"}}"#,
            )
            .await?
            .json();
        assert_eq!(
            (&raw["variant"], &raw["reason"], &raw["metadata"]["rollout"]),
            (&json!("warehouse"), &json!("SPLIT"), &json!(10)),
            "{name}: {raw}"
        );

        // warehouse 100 %, then a rollback seen by the server within 1 s.
        ok(run(&[
            "flags",
            "set",
            "views",
            "warehouse",
            "--rollout",
            "100",
        ]));
        holds(&server, "views", "warehouse 100").await?;
        let a = server.read("/v1/reports/views_daily", "u1").await?;
        assert_eq!(a.header("cutover-source"), "warehouse", "{name}");
        assert_eq!(a.header("cutover-flag"), "warehouse 100%", "{name}");
        ok(run(&[
            "flags",
            "set",
            "views",
            "shadow",
            "--reason",
            "rollback drill",
        ]));
        let seen_in = holds(&server, "views", "shadow 0").await?;
        assert!(
            seen_in < Duration::from_secs(1),
            "{name}: the rollback took {seen_in:?}"
        );
        let a = server.read("/v1/reports/views_daily", "u1").await?;
        assert_eq!(a.header("cutover-source"), "legacy", "{name}");

        // Back to 100 %, then retired once it held for `retire_after` with
        // no legacy read.
        ok(run(&[
            "flags",
            "set",
            "views",
            "warehouse",
            "--rollout",
            "100",
        ]));
        holds(&server, "views", "warehouse 100").await?;
        let why = fail(run(&["flags", "set", "views", "retired"]));
        assert!(why.contains("retiring needs 2s"), "{name}: {why}");
        tokio::time::sleep(Duration::from_millis(2100)).await;
        ok(run(&["flags", "set", "views", "retired"]));
        holds(&server, "views", "retired 100").await?;
        // Comparisons queued before the retirement are done or skipped.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = server
            .metric("cutover_legacy_computations_total", "views_")
            .await?;
        for i in 0..10 {
            let report = if i % 2 == 0 {
                "views_daily"
            } else {
                "views_by_plan"
            };
            let a = server
                .read(&format!("/v1/reports/{report}"), &format!("r{i}"))
                .await?;
            assert_eq!(a.header("cutover-source"), "warehouse", "{name}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = server
            .metric("cutover_legacy_computations_total", "views_")
            .await?;
        assert!(before > 0.0, "{name}: legacy computations were counted");
        assert_eq!(
            before, after,
            "{name}: retired, the legacy analytics are not called"
        );

        // The sunset report says so.
        let sunset: Value = serde_json::from_str(&ok(run(&["sunset", "--format", "json"])))?;
        let verdict = |p: &str| {
            sunset
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["flag"]["data_point"] == p)
                .map(|o| o["verdict"].clone())
                .unwrap()
        };
        assert_eq!(verdict("views"), "retired", "{name}");
        assert_eq!(verdict("shares"), "promotion_blocked", "{name}");
        assert_eq!(verdict("sessions"), "not_started", "{name}");
        let table = ok(run(&["sunset"]));
        assert!(
            table.contains("shadow comparisons mismatched"),
            "{name}: {table}"
        );

        pool.close().await;
        server.stop().await?;
    }
    client.database(&db).drop().await?;
    Ok(())
}

/// The HTTP surface's own checks: bad parameters and bodies get a 4xx that
/// says what is wrong; OFREP's bulk evaluation with its ETag; a bearer
/// token when asked for; no server on another address without one; the
/// page in a real browser.
#[tokio::test]
async fn the_read_api_checks_what_it_is_sent() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let events = support::seed(dir.path(), 1500, 78);
    let wh = format!("sqlite:{}", dir.path().join("w.db").display());
    let work = dir.path().join("work");
    let dags = support::root().join("dags");
    let source = events.display().to_string();
    let cmd = || support::command(&source, &wh, &work, &dags);
    ok(cmd().args(["run", "--all"]).output()?);

    let out = cmd()
        .args(["serve", "--addr", "0.0.0.0:0"])
        .env_remove("CUTOVER_SERVE_TOKEN")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("needs a bearer token (set CUTOVER_SERVE_TOKEN)"),
        "{err}"
    );

    let server = Server::start(cmd(), &[])?;
    for (path, status, says) in [
        ("/v1/reports/view_daily", 404, "unknown report `view_daily`"),
        (
            "/v1/reports/views_daily?from=yesterday",
            400,
            "from: `yesterday` is not a date",
        ),
        (
            "/v1/reports/views_daily?from=2026-03-02&to=2026-03-01",
            400,
            "must be before to",
        ),
        (
            "/v1/reports/shares_daily?presentation_id=p1",
            400,
            "shares_daily has no presentation_id",
        ),
        (
            "/v1/reports/views_daily?form=2026-03-01",
            400,
            "unknown field `form`",
        ),
        (
            "/v1/reports/views_daily?format=xml",
            400,
            "`xml` is not json or csv",
        ),
        ("/v2/nothing", 404, "no such path"),
    ] {
        let a = server.get(path).await?;
        assert_eq!(a.status, status, "{path}: {}", a.text);
        assert!(
            a.json()["error"].as_str().unwrap().contains(says),
            "{path}: {}",
            a.text
        );
    }

    let a = server
        .post("/ofrep/v1/evaluate/flags/views", "{not json")
        .await?;
    assert_eq!(
        (a.status, a.json()["errorCode"].as_str()),
        (400, Some("PARSE_ERROR"))
    );
    let a = server
        .post("/ofrep/v1/evaluate/flags/views", r#"{"context":{}}"#)
        .await?;
    assert_eq!(
        (a.status, a.json()["errorCode"].as_str()),
        (400, Some("TARGETING_KEY_MISSING"))
    );
    let a = server
        .post(
            "/ofrep/v1/evaluate/flags/nope",
            r#"{"context":{"targetingKey":"u"}}"#,
        )
        .await?;
    assert_eq!(
        (a.status, a.json()["errorCode"].as_str()),
        (404, Some("FLAG_NOT_FOUND"))
    );
    let a = server
        .post(
            "/ofrep/v1/evaluate/flags/views",
            r#"{"context":{"targetingKey":"u"}}"#,
        )
        .await?;
    assert_eq!(a.status, 200);
    let e = a.json();
    assert_eq!(
        (&e["value"], &e["variant"], &e["reason"]),
        (&json!("legacy"), &json!("legacy"), &json!("STATIC"))
    );
    assert_eq!(e["metadata"]["reports"], "views_daily,views_by_plan");

    let body = r#"{"context":{"targetingKey":"user-7"}}"#;
    let first = server.post("/ofrep/v1/evaluate/flags", body).await?;
    assert_eq!(first.status, 200);
    let flags: Vec<String> = first.json()["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(flags.len(), 4, "{}", first.text);
    let etag = first.header("etag").to_owned();
    assert!(etag.starts_with('"'), "{etag}");
    let same = server
        .send(
            reqwest::Client::new()
                .post(format!("{}/ofrep/v1/evaluate/flags", server.base))
                .header("if-none-match", &etag)
                .body(body),
        )
        .await?;
    assert_eq!(same.status, 304);
    ok(cmd()
        .args(["flags", "set", "engagement", "shadow"])
        .output()?);
    until(Duration::from_secs(5), || async {
        let changed = server
            .send(
                reqwest::Client::new()
                    .post(format!("{}/ofrep/v1/evaluate/flags", server.base))
                    .header("if-none-match", &etag)
                    .body(body),
            )
            .await?;
        Ok(changed.status == 200 && changed.header("etag") != etag)
    })
    .await?;

    let api = server.get("/openapi.json").await?.json();
    for path in [
        "/v1/reports/{name}",
        "/ofrep/v1/evaluate/flags/{key}",
        "/ofrep/v1/evaluate/flags",
    ] {
        assert!(api["paths"][path].is_object(), "{path} in {api}");
    }
    let csv = server
        .send(
            reqwest::Client::new()
                .get(format!("{}/v1/reports/shares_daily", server.base))
                .header("accept", "text/csv"),
        )
        .await?;
    assert_eq!(csv.status, 200);
    assert!(
        csv.header("content-type").starts_with("text/csv"),
        "{csv:?}"
    );
    assert!(csv.text.starts_with("day,channel,shares\n"), "{}", csv.text);
    let metrics = server.get("/metrics").await?.text;
    assert!(
        metrics.contains(r#"cutover_flag_state{data_point="engagement",state="shadow"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"cutover_report_requests_total{report="shares_daily",source="legacy",status="200"} 1"#
        ),
        "{metrics}"
    );

    page_in_a_browser(&server.base);
    server.stop().await?;

    // With a token, every request carries it.
    let mut with_token = cmd();
    with_token.env("CUTOVER_SERVE_TOKEN", "s3cret-token-for-the-api");
    let server = Server::start(with_token, &[])?;
    assert_eq!(server.get("/v1/reports/shares_daily").await?.status, 401);
    let a = server
        .send(
            reqwest::Client::new()
                .get(format!("{}/v1/reports/shares_daily", server.base))
                .header("authorization", "Bearer s3cret-token-for-the-api"),
        )
        .await?;
    assert_eq!(a.status, 200, "{}", a.text);
    let log = server.stop().await?;
    assert!(!log.contains("s3cret-token-for-the-api"), "{log}");
    Ok(())
}

/// The status page as a browser shows it.
fn page_in_a_browser(base: &str) {
    let Some(chromium) = support::chromium() else {
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("{base}/"))
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("<h1>The analytics cutover</h1>"), "{dom}");
    for point in ["views", "engagement", "shares", "sessions"] {
        assert!(dom.contains(&format!("<h2>{point}</h2>")), "{point}: {dom}");
    }
    assert!(
        dom.contains(r#"data-flag="engagement">shadow</span>"#),
        "the flag set a moment ago: {dom}"
    );
    assert!(
        dom.contains("href=\"/v1/flags/views\""),
        "figures link to their JSON: {dom}"
    );
    assert!(
        dom.contains("Last runs") && dom.contains("succeeded"),
        "{dom}"
    );
}

/// A property-based API fuzzer (schemathesis) reads `/openapi.json` and
/// sends what it describes, valid and not: no answer is a server error, and
/// every answer has a documented status, content type and schema.
#[tokio::test]
async fn a_fuzzer_finds_no_server_error_and_no_undocumented_answer() -> Result<()> {
    let Some(fuzzer) = support::tool("CUTOVER_TEST_SCHEMATHESIS", "schemathesis") else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let events = support::seed(dir.path(), 300, 79);
    let wh = format!("sqlite:{}", dir.path().join("w.db").display());
    let work = dir.path().join("work");
    let dags = support::root().join("dags");
    let source = events.display().to_string();
    let cmd = || support::command(&source, &wh, &work, &dags);
    ok(cmd().args(["run", "--all"]).output()?);
    ok(cmd().args(["flags", "set", "views", "shadow"]).output()?);
    let server = Server::start(cmd(), &[])?;
    let out = tokio::task::spawn_blocking({
        let url = format!("{}/openapi.json", server.base);
        let reports = dir.path().join("fuzz");
        move || {
            Command::new(fuzzer)
                .current_dir(reports.parent().expect("a temporary directory"))
                .args(["run", &url, "--checks", "all"])
                // A name or an instant drawn at random is rightly refused
                // (404, 400), which this check would call a failure.
                .args(["--exclude-checks", "positive_data_acceptance"])
                .args(["--max-examples", "40", "--seed", "7", "--no-color"])
                .args(["--generation-database", "none"])
                .arg(format!("--report-dir={}", reports.display()))
                .output()
        }
    })
    .await??;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}\n{}", server.log());
    let operations = server.get("/openapi.json").await?.json()["paths"]
        .as_object()
        .map_or(0, |p| {
            p.values()
                .map(|i| i.as_object().map_or(0, |o| o.len()))
                .sum::<usize>()
        });
    assert!(
        text.contains("No issues found") && text.contains(&format!("Tested: {operations}")),
        "every operation was fuzzed: {text}"
    );
    server.stop().await?;
    Ok(())
}
